"""Convert a trusted checkpoint that the safe loader refuses into the compact weights-only format.

    python -m models.convert_checkpoint IN OUT --trust-source [--config CONFIG] [--dtype fp32]

IN is unpickled in full (which runs any code stored in it), so the command asks for
--trust-source: use it only on files from a source you trust. OUT holds the EMA weights and the
config (models.export_weights) and loads with the safe loader everywhere (load_score_model,
--checkpoint-path). A score_sde checkpoint holds no config: give the one it was trained with.
"""

import argparse
import sys
from pathlib import Path

import torch

from models.checkpoint import export_weights, load_score_model, read_checkpoint

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
"""--dtype name -> dtype of the trainable weights in OUT (fp32 keeps them exactly)."""


def convert(source, target, config=None, dtype="fp32") -> Path:
    """Unpickle the trusted checkpoint source in full and write its EMA weights to target as a
    compact file; returns target after reading it back with the safe loader.

    Args:
        source: score_sde checkpoint or compact file.
        target: destination of the compact file.
        config: the network's config (required for a score_sde checkpoint).
        dtype: a key of DTYPES.
    """
    net = load_score_model(config, source, trust=True)
    info = net.checkpoint_info
    meta = {**info["meta"], "converted_from": Path(source).name}
    if info["step"] is not None:
        meta["step"] = info["step"]
    export_weights(target, net, net.config, meta=meta, dtype=DTYPES[dtype])
    load_score_model(None, target)
    return Path(target)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m models.convert_checkpoint",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("source", type=Path, help="checkpoint to convert (unpickled in full)")
    parser.add_argument("target", type=Path, help="compact weights file to write")
    parser.add_argument(
        "--trust-source",
        action="store_true",
        help="confirm that the source is trusted: unpickling it runs any code stored in it",
    )
    parser.add_argument(
        "--config", default=None, help="model config (YAML or score_sde .py) of a score_sde checkpoint"
    )
    parser.add_argument(
        "--dtype", choices=sorted(DTYPES), default="fp32", help="precision of the stored weights"
    )
    args = parser.parse_args(argv)
    try:
        if not args.trust_source:
            read_checkpoint(args.source)
            raise ValueError(
                f"{args.source} loads with the safe loader already; convert it anyway with --trust-source"
            )
        target = convert(args.source, args.target, args.config, args.dtype)
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
