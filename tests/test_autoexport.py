"""encode's automatic export on first use (hybridhash.autoexport), driven by fake CPU flag sets: it
writes the weights' cache folder once and says so, reuses it, never replaces a foreign file, does
nothing without units or when skipped, and never changes the pair an existing collection records."""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("openvino")

from hybridhash import autoexport, precision as P  # noqa: E402
from hybridhash.app import cli  # noqa: E402
from hybridhash.app.encode import encode_collection  # noqa: E402
from hybridhash.engines import CALIBRATION_NAME, INT8_NAME, ONNX_NAME  # noqa: E402
from hybridhash.engines.exports import CACHE_ENV, cache_dir  # noqa: E402
from hybridhash.engines.pytorch import weights_beside  # noqa: E402
from hybridhash.locking import exclusive  # noqa: E402
from tests.helpers.encoding import make_images, save_model  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
AMX = frozenset("avx2 avx512f avx512_vnni avx512_bf16 amx_bf16 amx_int8".split())
AVX2 = frozenset("avx2 fma".split())
IMAGES = 60  # make_images: 6 per class, 10 classes


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("autoexport")
    make_images(base / "images", bad=False)
    ckpt = save_model(base / "ckpt")
    return {"base": base, "images": base / "images", "ckpt": ckpt, "cache": base / "cache",
            "folder": None, "fingerprint": weights_beside(ckpt)}


@pytest.fixture
def units(monkeypatch, setup):
    """This CPU seen as one with bf16 and int8 units, the automatic export on, the shared cache."""
    monkeypatch.setattr(P, "cpu_flags", lambda path="/proc/cpuinfo": AMX)
    monkeypatch.delenv(autoexport.NO_AUTO_EXPORT_ENV, raising=False)
    monkeypatch.setenv(CACHE_ENV, str(setup["cache"]))
    return monkeypatch


def _encode(setup, out, **kw):
    return encode_collection(setup["images"], out, setup["ckpt"], progress=False, **kw)


def _pair(col):
    return col.manifest["runtime"], col.manifest["precision"]


def test_first_use_writes_the_cache_and_says_so(setup, units, tmp_path, caplog):
    with caplog.at_level(logging.INFO):
        col = _encode(setup, tmp_path / "first")
    folder = cache_dir(setup["fingerprint"])
    assert folder.parent.parent == setup["cache"]
    for name in (ONNX_NAME, INT8_NAME, CALIBRATION_NAME):
        assert (folder / name).is_file(), name
    assert not (setup["ckpt"] / ONNX_NAME).exists()  # the user's folder is never written
    assert not [p for p in folder.iterdir() if p.name.startswith(".export-")]  # the work folder is gone
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("exporting ")]
    assert len(said) == 1 and str(folder) in said[0] and "--no-auto-export" in said[0] and "int8" in said[0]
    assert not [r for r in caplog.records if r.name == "root"]  # onnxruntime quantizer's advice kept to debug
    doc = json.loads((folder / CALIBRATION_NAME).read_text())
    # half of the collection's images are held out, the other half calibrate int8
    assert doc["held_out"] == IMAGES // 2 and doc["calibration_images"] == IMAGES // 2
    assert doc["fingerprint"] == setup["fingerprint"]
    assert col.manifest["precision"] == P.choose_precision(col.manifest["runtime"], doc, AMX)[0]
    assert col.manifest["runtime"] == "openvino"  # auto takes OpenVINO once an export exists
    setup["folder"] = folder


def test_second_run_reuses_the_cache(setup, units, tmp_path, caplog):
    if setup["folder"] is None:
        pytest.skip("needs test_first_use_writes_the_cache_and_says_so")
    folder = setup["folder"]
    before = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    with caplog.at_level(logging.INFO):
        col = _encode(setup, tmp_path / "second")
    assert "exporting " not in caplog.text
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == before
    doc = json.loads((folder / CALIBRATION_NAME).read_text())
    assert col.manifest["precision"] == P.choose_precision("openvino", doc, AMX)[0]


def test_a_foreign_file_is_not_replaced(setup, units, tmp_path, caplog):
    units.setenv(CACHE_ENV, str(tmp_path / "cache"))
    folder = cache_dir(setup["fingerprint"])
    folder.mkdir(parents=True)
    (folder / INT8_NAME).write_bytes(b"someone else's file")
    with caplog.at_level(logging.INFO):
        col = _encode(setup, tmp_path / "codes")
    assert (folder / INT8_NAME).read_bytes() == b"someone else's file"
    assert not (folder / ONNX_NAME).exists() and _pair(col)[1] == "fp32"
    assert f"{folder / INT8_NAME} was not written by hybridhash and is not replaced" in caplog.text


def test_no_units_no_export(setup, units, tmp_path):
    units.setattr(P, "cpu_flags", lambda path="/proc/cpuinfo": AVX2)
    units.setenv(CACHE_ENV, str(tmp_path / "cache"))
    col = _encode(setup, tmp_path / "codes")
    assert not (tmp_path / "cache").exists() and _pair(col) == ("torch", "fp32")


def test_skipped_by_option_and_by_environment(setup, units, tmp_path):
    units.setenv(CACHE_ENV, str(tmp_path / "cache"))
    assert cli.main(["encode", "--checkpoint", str(setup["ckpt"]), "--images", str(setup["images"]),
                     "--collection", str(tmp_path / "a"), "--workers", "0", "--no-progress",
                     "--no-auto-export"]) == 0
    assert not (tmp_path / "cache").exists()
    units.setenv(autoexport.NO_AUTO_EXPORT_ENV, "1")
    assert _pair(_encode(setup, tmp_path / "b")) == ("torch", "fp32")
    assert not (tmp_path / "cache").exists()


def test_an_existing_collection_keeps_its_pair(setup, units, tmp_path):
    units.setenv(CACHE_ENV, str(tmp_path / "cache"))
    out = tmp_path / "codes"
    first = _encode(setup, out, auto_export=False)
    assert _pair(first) == ("torch", "fp32")
    again = _encode(setup, out)  # an update with the export on: the recorded pair, no export
    assert _pair(again) == ("torch", "fp32") and not (tmp_path / "cache").exists()
    assert np.array_equal(np.asarray(again.codes), np.asarray(first.codes))


def test_a_second_process_skips_while_one_exports(setup, units, tmp_path, caplog):
    units.setenv(CACHE_ENV, str(tmp_path / "cache"))
    folder = cache_dir(setup["fingerprint"])
    with exclusive(folder, what="export cache"), caplog.at_level(logging.WARNING):
        assert autoexport.auto_export(setup["ckpt"], lambda tf, n: pytest.fail("decoded under a lock")) is None
    assert "being written by another process" in caplog.text and not (folder / ONNX_NAME).exists()


def test_too_few_images_no_export(setup, units, tmp_path, caplog):
    units.setenv(CACHE_ENV, str(tmp_path / "cache"))
    import torch

    with caplog.at_level(logging.INFO):
        got = autoexport.auto_export(setup["ckpt"], lambda tf, n: torch.zeros(autoexport.MIN_IMAGES - 1, 3, 32, 32))
    assert got is None and "calibration needs" in caplog.text
    assert not (cache_dir(setup["fingerprint"]) / ONNX_NAME).exists()


def test_an_export_whose_fp32_codes_disagree_is_not_kept(setup, units, tmp_path, caplog):
    """The fp32 graph must give PyTorch's codes; figures saying otherwise leave nothing in the cache."""
    from hybridhash import calibration

    units.setenv(CACHE_ENV, str(tmp_path / "cache"))
    real = calibration.calibrate

    def disagreeing(*args, **kw):
        doc = real(*args, **kw)
        for entry in doc["paths"]:
            if entry["precision"] == "fp32" and entry["runtime"] != "torch":
                entry["agreement"] = 0.9
        return doc

    units.setattr(calibration, "calibrate", disagreeing)
    with caplog.at_level(logging.WARNING):
        col = _encode(setup, tmp_path / "codes")
    folder = cache_dir(setup["fingerprint"])
    assert "gives other codes than PyTorch at fp32" in caplog.text
    assert not [p for p in folder.iterdir() if p.name in (ONNX_NAME, INT8_NAME, CALIBRATION_NAME)]
    assert not [p for p in folder.iterdir() if p.name.startswith(".export-")]
    assert _pair(col) == ("torch", "fp32")


def test_an_exporter_failure_is_one_warning_and_the_encode_goes_on(setup, units, tmp_path, caplog):
    from hybridhash import export

    units.setenv(CACHE_ENV, str(tmp_path / "cache"))

    def broken(*args, **kw):
        raise RuntimeError("exporter\nfailed\n  on an operator")

    units.setattr(export, "export_onnx", broken)
    with caplog.at_level(logging.WARNING):
        col = _encode(setup, tmp_path / "codes")
    lines = [r.getMessage() for r in caplog.records if r.name == "hybridhash.autoexport"]
    assert len(lines) == 1 and "RuntimeError: exporter failed on an operator" in lines[0] and "\n" not in lines[0]
    assert _pair(col) == ("torch", "fp32") and col.count == IMAGES
    assert not (cache_dir(setup["fingerprint"]) / ONNX_NAME).exists()
