"""Loading, checking and running ONNX models (ONNX Runtime on CPU is the reference)."""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..errors import INTERNAL_ERROR, MISSING_CAPABILITY, TrtBuildError


def load(path: str | Path, check: bool = True) -> Any:
    """Load an ONNX model; a missing, truncated or invalid file raises TrtBuildError."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise TrtBuildError(f"{path}: no such ONNX file")
    try:
        model = onnx.load(str(path))  # external data: read from beside the file
    except FileNotFoundError as e:
        raise TrtBuildError(f"{path}: external data file missing ({e.filename or e})")
    except Exception as e:
        raise TrtBuildError(f"{path}: not a readable ONNX model ({type(e).__name__}: "
                            f"{str(e).splitlines()[0] if str(e) else 'parse error'})")
    if not model.graph.node and not model.graph.output:
        raise TrtBuildError(f"{path}: not an ONNX model (empty graph)")
    if not model.graph.output:
        raise TrtBuildError(f"{path}: the model has no graph outputs")
    if check:
        check_model(str(path), path)  # a path: the checker reads the file in C++, no re-encoding
    from .inputs import check_supported

    check_supported(model, str(path))
    return model


def check_model(model: Any, where: str | Path, ours: bool = False) -> None:
    """onnx.checker on a ModelProto or a file path; raises TrtBuildError naming `where`:
    exit 2 for the user's model, INTERNAL_ERROR for one trtbuild is about to write
    (`ours`: the user's model passed the checker, so that is a trtbuild bug)."""
    import onnx

    try:
        if is_large(model):  # the checker serializes a ModelProto: by path past 2 GiB
            with on_disk(model) as path:
                onnx.checker.check_model(str(path), full_check=False)
        else:
            onnx.checker.check_model(model, full_check=False)
    except Exception as e:
        first = str(e).splitlines()[0]
        if ours:
            raise TrtBuildError(f"{where}: internal error: trtbuild made an invalid model "
                                f"(ONNX checker: {first}); please report it", INTERNAL_ERROR)
        raise TrtBuildError(f"{where}: ONNX checker failed: {first}")


PROTO_LIMIT = 1_800_000_000  # protobuf files stop at 2 GiB; above this, weights go external
HOLD_BYTES = 1 << 20  # weights set aside while onnx's tools serialize a large model
HEAVY_BYTES = 1 << 30  # weights over this: sessions and checks read the model from a file
RUN_BYTES = 2 << 30  # the outputs one observing run may return (run_budget)


def save(model: Any, path: str | Path, keep_weights: bool = True) -> None:
    """Save atomically. Models over PROTO_LIMIT keep their weights in `<name>.data` beside
    the file (written first; the .onnx that points at it is renamed into place last);
    `keep_weights=False`: the caller drops `model` after, so its weights, moved to the file,
    are not read back."""
    import os

    import onnx
    from onnx.external_data_helper import load_external_data_for_model, set_external_data

    from ..files import WORK_DIR, atomic_path, note_written

    path = Path(path)
    with atomic_path(path) as tmp:
        if not is_large(model):
            onnx.save(model, str(tmp))
            return
        data = path.with_name(f"{path.name}.data")
        # staged in a folder of its own: onnx appends to an existing .data file (a second
        # save grew it); the new .data replaces the old one, then the .onnx is renamed last
        with tempfile.TemporaryDirectory(prefix=f"{WORK_DIR}{os.getpid()}-",
                                         dir=path.parent) as folder:
            staged = Path(folder) / path.name
            # onnx's save_as_external_data refuses a location that exists relative to the
            # working directory (a user's own model.onnx.data there): marked here instead
            for tensor in _initializers(model.graph):
                if tensor.HasField("raw_data") and len(tensor.raw_data) >= 1024:
                    set_external_data(tensor, data.name)
            onnx.save_model(model, str(staged))
            # saving moved the weights out of `model` into the file: read them back, so the
            # caller's model stays whole
            if keep_weights:
                load_external_data_for_model(model, folder)
            with open(Path(folder) / data.name, "rb") as f:
                os.fsync(f.fileno())
            # onnx creates the weights file 0600; it is as readable as the .onnx beside it
            os.chmod(Path(folder) / data.name, 0o666 & ~umask())
            os.replace(Path(folder) / data.name, data)
            note_written(data)
            os.replace(staged, tmp)


def _initializers(graph: Any) -> Iterator[Any]:
    """Every initializer of the graph and of its subgraphs."""
    for g in graphs(graph):
        yield from g.initializer


def umask() -> int:
    """The process's umask, read without changing it (os.umask sets it: not thread-safe)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022


def is_large(model: Any) -> bool:
    """A ModelProto too large to serialize in one piece (over PROTO_LIMIT)? Decided from
    bounds on its size got from the tensors' dims (no encoding) where they settle it; else
    by protobuf's ByteSize, which encodes the whole model (0.45 s for vit_b_16's 345 MB,
    asked about 17 times per build) and past 2 GiB raises EncodeError."""
    from google.protobuf.message import EncodeError

    if isinstance(model, (str, Path, bytes)):
        return False
    if hasattr(model, "graph") and not model.training_info:  # rare: ByteSize decides
        low, high = _size_bounds(model)
        if high < PROTO_LIMIT:
            return False
        if low > PROTO_LIMIT:
            return True
    try:
        return model.ByteSize() > PROTO_LIMIT
    except EncodeError:
        return True


_ITEM = 16  # a field's tag, length prefix or number: at most 15 bytes


def is_heavy(model: Any) -> bool:
    """A ModelProto whose weights are over HEAVY_BYTES, or a large one: ONNX Runtime gets
    it as a file, not as bytes (a session made from bytes keeps them for its lifetime).
    Writing the file costs time (part of the 20% vit_b_16 took with a 64 MB bound), so
    only past 1 GB."""
    if isinstance(model, (str, Path, bytes)):
        return False
    return _size_bounds(model)[0] > HEAVY_BYTES or is_large(model)


def _fields(msg: Any, skip: tuple[str, ...] = ()) -> int:
    """A bound on the encoded bytes of `msg`'s fields but `skip` (never read: raw_data
    would be copied): strings by their length, messages by ByteSize (cheap for the small
    ones this is called on), numbers by _ITEM."""
    n = 0
    for field in msg.DESCRIPTOR.fields:
        if field.name in skip:
            continue
        if (field.is_repeated if hasattr(field, "is_repeated")  # protobuf >= 5.28
                else field.label == field.LABEL_REPEATED):
            values = getattr(msg, field.name)
        elif msg.HasField(field.name):  # ONNX's proto2: every singular field has presence
            values = [getattr(msg, field.name)]
        else:
            continue
        for v in values:
            if isinstance(v, str):
                v = v.encode()
            n += _ITEM + (len(v) if isinstance(v, bytes) else
                          v.ByteSize() if hasattr(v, "ByteSize") else 0)
    return n


def _size_bounds(model: Any) -> tuple[int, int]:
    """(low, high) bounds on the encoded bytes of a ModelProto without training_info: low
    counts raw tensor data only; high adds everything else, exactly for small messages
    and from the dims for tensors (_tensor_bytes), with _ITEM for each tag and length."""
    low, high = _graph_bounds(model.graph)
    return low, high + _ITEM + _fields(model, ("graph", "training_info"))


def _graph_bounds(graph: Any) -> tuple[int, int]:
    """(low, high) for a GraphProto with its subgraphs."""
    low, high = 0, _fields(graph, ("node", "initializer", "sparse_initializer"))

    def tensor(t: Any) -> None:
        nonlocal low, high
        exact, bound = _tensor_bytes(t)
        low += exact
        high += 2 * _ITEM + bound + _fields(t, _TENSOR_DATA)

    def sparse(t: Any) -> None:
        nonlocal high
        tensor(t.values), tensor(t.indices)
        high += _ITEM + _fields(t, ("values", "indices"))

    for t in graph.initializer:
        tensor(t)
    for t in graph.sparse_initializer:
        sparse(t)
    for node in graph.node:
        high += _ITEM + _fields(node, ("attribute",))
        for a in node.attribute:
            high += _ITEM + _fields(a, _ATTRIBUTE_TENSORS)
            for t in ([a.t] if a.HasField("t") else []) + list(a.tensors):
                tensor(t)
            for t in ([a.sparse_tensor] if a.HasField("sparse_tensor") else []) + list(
                    a.sparse_tensors):
                sparse(t)
            for sub in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                more, most = _graph_bounds(sub)
                low, high = low + more, high + most + _ITEM
    return low, high


_TENSOR_DATA = ("raw_data", "float_data", "int32_data", "string_data", "int64_data",
                "double_data", "uint64_data")
_ATTRIBUTE_TENSORS = ("t", "g", "sparse_tensor", "tensors", "graphs", "sparse_tensors")


def _tensor_bytes(t: Any) -> tuple[int, int]:
    """(bytes of raw data, a bound on the data fields' bytes) of a TensorProto: raw data
    from element count x element size (reading raw_data would copy it), the typed fields
    (packed) from their lengths; none for external data."""
    from onnx import TensorProto, helper

    if t.data_location == TensorProto.EXTERNAL:
        return 0, 0
    typed = (4 * len(t.float_data) + 8 * len(t.double_data) + 10 * (
        len(t.int32_data) + len(t.int64_data) + len(t.uint64_data))
        + sum(len(x) + _ITEM for x in t.string_data))
    if not t.HasField("raw_data"):
        return 0, typed
    count = max(int(np.prod(t.dims, dtype=np.int64)), 0)
    try:
        size = np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
    except (KeyError, TypeError, ValueError):
        size = 16
    sub_byte = t.data_type in {getattr(TensorProto, n, -1) for n in
                               ("INT4", "UINT4", "FLOAT4E2M1", "INT2", "UINT2")}
    return (count * size // 8 if sub_byte else count * size), count * size + typed


@contextlib.contextmanager
def on_disk(model: Any) -> Iterator[Path]:
    """`model` saved in a temporary folder (weights as external data when large), for the
    tools that take a large model only by path; the folder is removed after."""
    with tempfile.TemporaryDirectory(prefix="trtbuild-model-") as folder:
        path = Path(folder) / "model.onnx"
        save(model, path)
        yield path


@contextlib.contextmanager
def weights_aside(model: Any) -> Iterator[dict[str, bytes]]:
    """`model`'s weights over HOLD_BYTES taken out while onnx's tools (which read only their
    types and dims) serialize it, put back after; yields them by name."""
    held = {}
    for t in model.graph.initializer:
        if len(t.raw_data) > HOLD_BYTES:
            held[t.name] = t.raw_data
            t.ClearField("raw_data")
    try:
        yield held
    finally:
        for t in model.graph.initializer:
            if t.name in held:
                t.raw_data = held[t.name]


def infer_shapes(model: Any, **kwargs: Any) -> Any:
    """onnx.shape_inference.infer_shapes, also past 2 GiB: a large model's weights (which
    shape inference reads only as types and dims) are set aside while it runs, and the
    value_info it found is put into `model` itself (returned)."""
    import onnx

    if not is_large(model):
        return onnx.shape_inference.infer_shapes(model, **kwargs)
    with weights_aside(model):
        found = onnx.shape_inference.infer_shapes(model, **kwargs)
    del model.graph.value_info[:]
    model.graph.value_info.extend(found.graph.value_info)
    return model


def compacted(model: Any) -> Any:
    """A copy of `model` holding only its live data: a ModelProto (protobuf's upb) keeps the
    bytes of fields removed or replaced in it until it dies (insert_qdq's copy kept vit_b_16's
    331 MB of FP32 weights beside their INT8); a fresh message's CopyFrom copies only what
    is live (no serialization: past 2 GiB too)."""
    import onnx

    fresh = onnx.ModelProto()
    fresh.CopyFrom(model)
    return fresh


def trim_heap() -> None:
    """Give freed heap memory back to the OS (glibc's malloc_trim): a large model's
    passes each free gigabytes of copies that the allocator would otherwise keep."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def uses_external_data(path: str | Path) -> bool:
    """Does the ONNX file keep tensors in other files (read without loading them)?"""
    import onnx
    from onnx.external_data_helper import uses_external_data as external

    model = onnx.load(str(path), load_external_data=False)
    return any(external(t) for t in model.graph.initializer)


def model_files(path: Path) -> list[Path]:
    """An ONNX file and the external data files its initializers name (read without its
    weights); any other file as itself."""
    if path.suffix != ".onnx":
        return [path]
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - not ONNX after all: its bytes are what counts
        return [path]
    names = {e.value for t in model.graph.initializer for e in t.external_data
             if e.key == "location"}
    return [path, *(path.parent / n for n in sorted(names))]


def session(model: Any, threads: int = 0, where: str | Path | None = None,
            light: bool = False, disabled: list[str] | None = None) -> Any:
    """A CPU ONNX Runtime session from a ModelProto, its bytes or a path (named `where` in
    errors). `light`: no pre-packed weight copies (a one-sample check of a large model:
    ONNX Runtime would hold its MatMul weights twice). `disabled`: ONNX Runtime optimizers
    to turn off; default: ort_workarounds for a ModelProto, and MatmulTransposeFusion for
    bytes or a file (not parsed again: a copy of a large model's weights; on vit_b_16 the
    fusion's absence was within the run-to-run spread).
    Raises TrtBuildError(3) when ONNX Runtime cannot load the model."""
    import onnxruntime as ort

    from ..thirdparty import ort_severity

    opts = ort.SessionOptions()
    opts.log_severity_level = ort_severity()
    if disabled is None:
        disabled = (list(WORKAROUND) if isinstance(model, (str, Path, bytes))
                    else ort_workarounds(model))
    # DQ(INT4)+MatMul fused into MatMulNBits computes in FP32, not with 8-bit activations
    opts.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "1")
    if light:
        opts.add_session_config_entry("session.disable_prepacking", "1")
    if threads:
        opts.intra_op_num_threads = threads
    try:
        if is_heavy(model):  # ONNX Runtime reads the file: no bytes kept
            with on_disk(model) as path:
                return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"],
                                            disabled_optimizers=disabled)
        data = model if isinstance(model, (str, Path, bytes)) else model.SerializeToString()
        return ort.InferenceSession(str(data) if isinstance(data, Path) else data, opts,
                                    providers=["CPUExecutionProvider"],
                                    disabled_optimizers=disabled)
    except Exception as e:  # noqa: BLE001 - ORT raises its own pybind exception types
        where = where or (model if isinstance(model, (str, Path)) else "model")
        raise TrtBuildError(f"{where}: ONNX Runtime (trtbuild's CPU reference) cannot load "
                            f"it: {_first_line(e)}", MISSING_CAPABILITY)


WORKAROUND = ("MatmulTransposeFusion",)


def ort_workarounds(model: Any) -> list[str]:
    """ONNX Runtime optimizers to turn off for `model` (a ModelProto, its bytes or a path).
    ORT 1.32's CPU provider segfaults creating a session at its default level for
    Transpose(perm [1,0,2]) -> Cast -> MatMul; it inserts that Cast itself before an FP16
    MatMul, so every FP16 ViT (torchvision's attention) hit it. Without MatmulTransposeFusion
    it loads and runs."""
    import onnx

    if isinstance(model, (str, Path)):
        model = onnx.load(str(model), load_external_data=False)
    elif isinstance(model, bytes):
        model = onnx.load_from_string(model)
    nodes = [n for g in graphs(model.graph) for n in g.node]
    producer = {o: n for n in nodes for o in n.output}
    fp16 = {t.name for g in graphs(model.graph) for t in g.initializer
            if t.data_type == onnx.TensorProto.FLOAT16}

    def swaps_leading(name: str) -> bool:
        n = producer.get(name)
        perm = next((list(a.ints) for a in n.attribute if a.name == "perm"), None) if n else None
        return n is not None and n.op_type == "Transpose" and perm == [1, 0, 2]

    for n in nodes:
        if n.op_type != "MatMul" or not n.input:
            continue
        a = producer.get(n.input[0])
        via_cast = a is not None and a.op_type == "Cast" and swaps_leading(a.input[0])
        if via_cast or (swaps_leading(n.input[0]) and any(i in fp16 for i in n.input[1:])):
            return list(WORKAROUND)
    return []


def graphs(graph: Any) -> Iterator[Any]:
    """`graph` and every subgraph in it (If/Loop/Scan bodies), depth first."""
    yield graph
    for node in graph.node:
        for body in subgraphs(node):
            yield from graphs(body)


def run(sess: Any, feed: dict[str, np.ndarray], where: str) -> list[np.ndarray]:
    """`sess.run` with ONNX Runtime's failures as one TrtBuildError(2) naming `where`."""
    try:
        return sess.run(None, feed)
    except Exception as e:  # noqa: BLE001 - ORT raises its own pybind exception types
        raise TrtBuildError(f"{where}: ONNX Runtime failed running the model: {_first_line(e)}")


def run_budget(model: Any) -> int:
    """Bytes one observing run of `model` may return: RUN_BYTES, or half its weights when
    that is more (the values come back as copies of ONNX Runtime's own buffers, so they
    cost twice their size: at most the weights' size again). Smaller budgets cost time
    and bought little below 1 GB of weights: at 256 MB vit_b_16's build took 20% longer
    for a peak 17% lower, at 1 GB 10% longer for the same peak."""
    return max(RUN_BYTES, _size_bounds(model)[0] // 2)


def output_groups(model: Any, names: list[str], budget: int) -> list[list[str]]:
    """`names` in order, cut into groups whose float32 values for one sample fit `budget`,
    each to be observed by its own session: ONNX Runtime allocates every graph output of a
    run, fetched or not (vit_b_16's FP16 probe of all its tensors: 2.1 GB a sample). A
    tensor of no known shape counts as the mean of the others."""
    sizes = tensor_bytes(model, names)
    known = [b for b in sizes if b is not None]
    guess = int(np.mean(known)) if known else 0
    groups: list[list[str]] = [[]]
    total = 0
    for name, size in zip(names, sizes):
        size = guess if size is None else size
        if groups[-1] and total + size > budget:
            groups.append([])
            total = 0
        groups[-1].append(name)
        total += size
    return groups


def tensor_bytes(model: Any, names: list[str]) -> list[int | None]:
    """Each tensor's float32 bytes for one sample, from the model's shapes (a symbolic dim,
    the batch's included, as 1; None where no shape is known)."""
    types = {v.name: v.type.tensor_type for g in (
        model.graph.value_info, model.graph.output, model.graph.input) for v in g}
    out: list[int | None] = []
    for name in names:
        t = types.get(name)
        out.append(4 * int(np.prod([max(d.dim_value, 1) for d in t.shape.dim], dtype=np.int64))
                   if t is not None and t.HasField("shape") else None)
    return out


def _first_line(e: BaseException) -> str:
    import re

    text = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", str(e).strip())
    text = re.sub(r"^/onnxruntime_src/\S+ ", "", text)
    return (text.splitlines()[0] if text else type(e).__name__)[:300]


def max_abs_diff(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    return max((float(np.max(np.abs(x.astype(np.float64) - y.astype(np.float64))))
                if x.size else 0.0) for x, y in zip(a, b))


def float_tensors(model: Any) -> set[str]:
    """Names of the float32 tensors of a shape-inferred model: inputs, outputs, value infos
    and initializers."""
    from onnx import TensorProto

    g = model.graph
    names = {vi.name for vi in list(g.input) + list(g.value_info) + list(g.output)
             if vi.type.tensor_type.elem_type == TensorProto.FLOAT}
    return names | {i.name for i in g.initializer if i.data_type == TensorProto.FLOAT}


def subgraphs(node: Any) -> list[Any]:
    """The GraphProtos a node carries (If branches, Loop/Scan bodies)."""
    from onnx import AttributeProto

    out = []
    for a in node.attribute:
        if a.type == AttributeProto.GRAPH:
            out.append(a.g)
        elif a.type == AttributeProto.GRAPHS:
            out.extend(a.graphs)
    return out


def subgraph_reads(graph: Any) -> set[str]:
    """Every tensor name read by a node inside a subgraph of `graph` (at any depth): the
    outer-scope tensors among them must keep their name and type."""
    names: set[str] = set()
    for node in graph.node:
        for sub in subgraphs(node):
            names |= {i for n in sub.node for i in n.input} | {o.name for o in sub.output}
            names |= subgraph_reads(sub)
    return names


def drop_unused_initializers(graph: Any) -> None:
    """Remove initializers that no node (subgraphs included) reads and that are not graph
    outputs."""
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    used |= subgraph_reads(graph)
    keep = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)


def opset(model: Any) -> int:
    """The default-domain opset of a ModelProto (0 if none)."""
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def copy_metadata(src: Any, dst: Any) -> None:
    """metadata_props of `src` onto `dst` (rapidocr's character table, Ultralytics' names):
    every artifact keeps what the package it came from reads back."""
    have = {p.key for p in dst.metadata_props}
    for p in src.metadata_props:
        if p.key not in have:
            dst.metadata_props.add(key=p.key, value=p.value)


DATA_DEPENDENT_OPS = frozenset({"NonZero", "NonMaxSuppression", "TopK", "Unique"})


def data_dependent_outputs(model: Any) -> dict[str, str]:
    """{graph output: op} for outputs downstream of an op whose selection or order depends
    on the values (detection post-processing: TopK, NonMaxSuppression, NonZero): on ties
    two correct runtimes may pick other elements, so element-wise comparison is not a
    meaningful check for them."""
    readers: dict[str, list] = {}
    for n in model.graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    outputs = {o.name for o in model.graph.output}
    found: dict[str, str] = {}
    for start in model.graph.node:
        if start.op_type not in DATA_DEPENDENT_OPS:
            continue
        frontier, seen = list(start.output), set()
        while frontier:
            t = frontier.pop()
            if t in seen:
                continue
            seen.add(t)
            if t in outputs:
                found.setdefault(t, start.op_type)
            for n in readers.get(t, []):
                frontier.extend(n.output)
    return found


def compare_outputs(names: list[str], a: list[np.ndarray], b: list[np.ndarray],
                    loose: dict[str, str]) -> tuple[float, list[str]]:
    """(max abs difference over the outputs not in `loose`, problems), where outputs in
    `loose` (data-dependent) only need the same dtype and rank."""
    diff, problems = 0.0, []
    for name, x, y in zip(names, a, b):
        if name in loose:
            if x.dtype != y.dtype or x.ndim != y.ndim:
                problems.append(f"{name}: {y.dtype}{y.shape} vs {x.dtype}{x.shape}")
            continue
        if x.shape != y.shape:
            problems.append(f"{name}: shape {y.shape} vs {x.shape}")
            continue
        diff = max(diff, max_abs_diff([x], [y]))
    return diff, problems
