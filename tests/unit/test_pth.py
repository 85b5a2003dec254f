"""The torch-free ``.pth`` reader: both file formats, and hostile pickles refused unrun."""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tlearn.errors import TlearnError, WeightsError
from tlearn.models import pth
from tlearn.models.lite_weights import package_weights_file
from torch_files import pickle_str, write_torch_zip


def write_hostile_zip(path: Path, payload: object, protocol: int) -> Path:
    """A zip-format ``.pth`` whose data.pkl is ``pickle.dumps(payload)``."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps(payload, protocol=protocol))
    return path


class RunsShell:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class RunsEval:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return eval, (f"__import__('pathlib').Path({str(self.marker)!r}).touch()",)


# --------------------------------------------------------------------------------------
# file formats
# --------------------------------------------------------------------------------------


def test_package_file_is_the_legacy_format_and_reads_completely(lite0_state_dict):
    path = package_weights_file("efficientnet_lite0")
    assert path.name == "efficientnet-lite0-57934424.pth" and not zipfile.is_zipfile(path)
    assert len(lite0_state_dict) == 296
    assert lite0_state_dict["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert lite0_state_dict["_fc.weight"].dtype == np.float32
    assert lite0_state_dict["_bn0.num_batches_tracked"].dtype == np.int64


def test_zip_format_with_strides_offsets_and_dtypes(tmp_path):
    shared = np.arange(12, dtype=np.float32)
    half = np.array([0.5, -2.0, 1024.0], dtype=np.float16)
    count = np.array([7], dtype=np.int64)
    path = write_torch_zip(tmp_path / "mixed.pth", {
        "matrix": ("0", 0, (3, 4), (4, 1)),
        "transposed": ("0", 0, (4, 3), (1, 4)),  # non-contiguous view of the same storage
        "tail": ("0", 8, (2, 2), (2, 1)),  # storage offset
        "half": ("1", 0, (3,), (1,)),
        "scalar": ("2", 0, (), ()),
    }, {"0": shared, "1": half, "2": count})

    loaded = pth.load_state_dict(path)
    np.testing.assert_array_equal(loaded["matrix"], shared.reshape(3, 4))
    np.testing.assert_array_equal(loaded["transposed"], shared.reshape(3, 4).T)
    np.testing.assert_array_equal(loaded["tail"], shared[8:].reshape(2, 2))
    np.testing.assert_array_equal(loaded["half"], half)
    assert loaded["half"].dtype == np.float16
    assert loaded["scalar"].shape == () and loaded["scalar"] == 7


def test_tensor_reaching_outside_its_storage_is_refused(tmp_path):
    path = write_torch_zip(tmp_path / "overrun.pth", {"w": ("0", 0, (3, 3), (3, 1))},
                           {"0": np.zeros(4, dtype=np.float32)})
    with pytest.raises(WeightsError, match="outside its storage"):
        pth.load_state_dict(path)


def test_non_pytorch_file_is_a_clear_error(tmp_path):
    path = tmp_path / "notes.pth"
    path.write_text("hello")
    with pytest.raises(WeightsError, match="notes.pth"):
        pth.load_state_dict(path)


# --------------------------------------------------------------------------------------
# hostile pickles
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("payload, protocol, refused", [
    (RunsShell, 2, "posix.system"),  # GLOBAL opcode; os.system lives in posix
    (RunsEval, 4, "builtins.eval"),  # STACK_GLOBAL opcode
])
def test_zip_pickle_naming_another_global_is_refused_without_running_it(
        tmp_path, payload, protocol, refused):
    marker = tmp_path / "pwned"
    path = write_hostile_zip(tmp_path / "evil.pth", payload(marker), protocol)
    with pytest.raises(pth.UnsafePickleError, match=refused) as error:
        pth.load_state_dict(path)
    assert isinstance(error.value, TlearnError)
    assert not marker.exists()


@pytest.mark.parametrize("target", [b"ctorch\nFloatStorage\n",
                                    b"ctorch._utils\n_rebuild_tensor_v2\n"])
def test_pickle_cannot_modify_allowed_objects_with_build(tmp_path, target):
    # GLOBAL <allowed>; EMPTY_DICT; 'dtype' -> 'O'; SETITEM; BUILD: would re-type every
    # later FloatStorage in the process (or patch the rebuild function) if accepted
    data_pkl = (b"\x80\x02" + target + b"}" + pickle_str("dtype") + pickle_str("O")
                + b"s" + b"b.")
    path = tmp_path / "build.pth"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", data_pkl)
    with pytest.raises(pth.UnsafePickleError, match="BUILD"):
        pth.load_state_dict(path)
    assert pth.SAFE_GLOBALS[("torch", "FloatStorage")].dtype == "<f4"


def test_legacy_pickle_naming_another_global_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil-legacy.pth"
    path.write_bytes(pickle.dumps(pth.LEGACY_MAGIC, protocol=2)
                     + pickle.dumps(pth.LEGACY_PROTOCOL, protocol=2)
                     + pickle.dumps({"little_endian": True}, protocol=2)
                     + pickle.dumps(RunsEval(marker), protocol=2))
    with pytest.raises(pth.UnsafePickleError, match=r"__builtin__\.eval"):  # protocol 2 name
        pth.load_state_dict(path)
    assert not marker.exists()
