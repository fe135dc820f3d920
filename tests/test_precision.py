"""models.precision: the default precision of each device type and the one precision table."""

import pytest
import torch

from models.precision import PRECISIONS, check_precision, default_precision


@pytest.mark.parametrize(
    "device, expected", [("cpu", "fp32"), (torch.device("cpu"), "fp32"), ("cuda", "bf16"), ("cuda:1", "bf16")]
)
def test_default_precision_is_bf16_on_cuda_and_fp32_on_the_cpu(device, expected):
    assert default_precision(device) == expected
    assert expected in PRECISIONS


def test_check_precision_names_the_accepted_precisions():
    with pytest.raises(ValueError, match="precision must be one of fp32, bf16, got 'fp16'"):
        check_precision("fp16")
