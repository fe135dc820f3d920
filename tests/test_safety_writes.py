"""A results file that cannot be written completely fails the run with one line and leaves the folder
marked INCOMPLETE, with nothing under the file's final name."""

import errno
import pathlib

import recon_CBCT
import utils.io
from recon.results import MARKER
from tests.test_entry import ct_phantom_hu
from utils.io import write_volume


def _argv(tmp_path):
    data = write_volume(tmp_path / "ct.nii.gz", ct_phantom_hu(), {"spacing": (1.0, 1.0, 1.0)})
    return ["--data", str(data), "--method", "FDK", "--device", "cpu", "--results-dir", str(tmp_path / "r")]


def _the_folder(tmp_path):
    (marker,) = (tmp_path / "r").rglob(MARKER)
    return marker.parent


def test_disk_full_in_the_middle_of_a_volume(tmp_path, monkeypatch, capsys):
    argv = _argv(tmp_path)
    write_nifti = utils.io._write_nifti

    def fill_up(temporary, *args):
        write_nifti(temporary, *args)
        temporary.write_bytes(temporary.read_bytes()[: temporary.stat().st_size // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(utils.io, "_write_nifti", fill_up)
    assert recon_CBCT.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot write ") and "No space left on device" in err and err.count("\n") == 1
    folder = _the_folder(tmp_path)
    assert "No space left on device" in (folder / MARKER).read_text()
    assert not list(folder.glob("*.nii*")) and not list(folder.glob(".*partial*"))


def test_a_silently_short_text_file_is_caught(tmp_path, monkeypatch, capsys):
    argv = _argv(tmp_path)
    write_bytes = pathlib.Path.write_bytes

    def half(self, data):
        return write_bytes(self, data[: len(data) // 2] if self.name.endswith("metrics.json") else data)

    monkeypatch.setattr(pathlib.Path, "write_bytes", half)
    assert recon_CBCT.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot write ") and "metrics.json: read back" in err and err.count("\n") == 1
    folder = _the_folder(tmp_path)
    assert not (folder / "metrics.json").exists() and not (folder / "recon.nii.gz").exists()
    assert not list(folder.glob(".*partial*"))
    assert "ERROR run failed: OSError: cannot write" in (folder / "run.log").read_text()
