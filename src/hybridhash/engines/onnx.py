"""The ONNX export run by onnxruntime on the CPU: ``OnnxEncoder.open(path)`` reads a file written by
:func:`hybridhash.export.export_onnx` back and stands in for the torch model (see
:class:`~.exported.ExportEncoder`). Only ``onnxruntime`` is needed to run a graph (the optional
extra ``hybridhash[onnx]``)."""
from __future__ import annotations

from typing import Optional

import numpy as np

from ..errors import CheckpointError
from .exported import (CODES_NAME, INPUT_NAME, OUTPUT_NAME, PREFIX, ExportEncoder, PathLike, check_graph,
                       check_open, missing_package, parse_metadata, run_precision)


class OnnxEncoder(ExportEncoder):
    """A hybridhash ONNX export run by onnxruntime on the CPU; stands in for the torch model.

    ``session`` is the ``onnxruntime.InferenceSession`` (its ``run`` is thread-safe).
    """

    engine = "onnxruntime"
    runtime = "onnx"

    @classmethod
    def open(cls, path: PathLike, *, threads: Optional[int] = None, inter_op_threads: int = 1,
             spinning: bool = True, precision: str = "fp32") -> "OnnxEncoder":
        """Load an export of :func:`~hybridhash.export.export_onnx`.

        Args:
            threads: onnxruntime's intra-op threads (None or 0: its default, one per physical core).
            inter_op_threads: threads running independent graph nodes in parallel (1: sequential).
            precision: fp32, or int8 for a quantized graph (model.int8.onnx); onnxruntime runs no bf16.
            spinning: let idle worker threads busy-wait for the next run (onnxruntime's default, the
                lowest latency). Turn it off where the process does other work between runs
                (decoding images, PyTorch's own threads): spinning threads take those cores.

        Raises:
            CheckpointError: no such file, not an ONNX model, or an ONNX model without the project's
                metadata (a foreign file), naming the file.
        """
        try:
            import onnxruntime as ort
        except ImportError:
            raise missing_package("onnxruntime") from None
        from ..precision import check_runtime_precision

        check_runtime_precision("onnx", precision)
        path = check_open(path, threads)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(threads or 0)
        opts.inter_op_num_threads = max(1, int(inter_op_threads))
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        opts.add_session_config_entry("session.inter_op.allow_spinning", "1" if spinning else "0")
        opts.log_severity_level = 3  # errors only: the warnings about unused initialisers are noise
        try:
            session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as err:  # onnxruntime raises its own exception types for foreign bytes
            first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
            raise CheckpointError(f"{path}: not a readable ONNX model ({first})") from None
        raw = session.get_modelmeta().custom_metadata_map
        meta = parse_metadata(path, {k[len(PREFIX):]: v for k, v in raw.items() if k.startswith(PREFIX)})
        meta["run_precision"] = run_precision(path, meta, precision)
        inputs = session.get_inputs()
        shape = [d if isinstance(d, int) else None for d in inputs[0].shape] if len(inputs) == 1 else []
        check_graph(path, [i.name for i in inputs], [o.name for o in session.get_outputs()], shape,
                    meta["config"].img_size)
        return cls(session, path, meta)

    def _infer(self, x: np.ndarray):
        outputs, codes = self.session.run([OUTPUT_NAME, CODES_NAME], {INPUT_NAME: x})
        return outputs, codes
