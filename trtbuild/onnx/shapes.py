"""Shape specs: `NAME:1x3x224x224` for inputs and `NAME:MIN,OPT,MAX` for engine profiles."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import TrtBuildError

Shape = tuple[int, ...]


def parse_dims(text: str, what: str) -> Shape:
    """'1x3x224x224' -> (1, 3, 224, 224); every dimension a positive integer."""
    parts = text.strip().lower().split("x")
    if not text.strip() or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise TrtBuildError(f"{what}: '{text}' is not a shape like 1x3x224x224")
    return tuple(int(p) for p in parts)


def _split_name(spec: str, what: str) -> tuple[str, str]:
    name, sep, dims = spec.rpartition(":")
    if not sep or not name:
        raise TrtBuildError(f"{what}: '{spec}' must be NAME:DIMS, e.g. input:1x3x224x224")
    return name, dims


def parse_input_spec(spec: str) -> tuple[str, Shape]:
    """`--input NAME:1x3x224x224` -> (name, shape)."""
    name, dims = _split_name(spec, "--input")
    return name, parse_dims(dims, f"--input {name}")


@dataclass(frozen=True)
class Profile:
    """One optimization-profile entry: min <= opt <= max elementwise, equal ranks."""

    name: str
    min: Shape
    opt: Shape
    max: Shape

    def check(self) -> "Profile":
        if not len(self.min) == len(self.opt) == len(self.max):
            raise TrtBuildError(f"--shapes {self.name}: MIN, OPT and MAX must have the same rank")
        if not all(a <= b <= c for a, b, c in zip(self.min, self.opt, self.max)):
            raise TrtBuildError(f"--shapes {self.name}: needs MIN <= OPT <= MAX in every dimension")
        return self


def parse_profile_spec(spec: str) -> Profile:
    """`--shapes input:1x3x8x8,8x3x8x8,32x3x8x8` (a single shape means MIN=OPT=MAX)."""
    name, dims = _split_name(spec, "--shapes")
    shapes = [parse_dims(d, f"--shapes {name}") for d in dims.split(",")]
    if len(shapes) == 1:
        shapes *= 3
    if len(shapes) != 3:
        raise TrtBuildError(f"--shapes {name}: give one shape or MIN,OPT,MAX")
    return Profile(name, *shapes).check()


def check_rank(name: str, shape: Shape, model_shape: list) -> None:
    """Raise when an --input shape does not fit the rank (or static dims) of the model input."""
    if len(shape) != len(model_shape):
        raise TrtBuildError(f"--input {name}: rank {len(shape)} given, model input has rank "
                            f"{len(model_shape)} {tuple(model_shape)}")
    for got, want in zip(shape, model_shape):
        if isinstance(want, int) and want > 0 and got != want:
            raise TrtBuildError(f"--input {name}: shape {shape} does not fit model input "
                                f"{tuple(model_shape)}")


def default_profile(name: str, dims: tuple[int, ...]) -> Profile | None:
    """None for a static shape (-1 marks a dynamic dim); batch 1/8/32 where only the first
    dim is dynamic; other dynamic dims need --shapes."""
    if all(d >= 0 for d in dims):
        return None
    if any(d < 0 for d in dims[1:]):
        raise TrtBuildError(f"input '{name}' has dynamic dims {dims} beyond the batch: "
                            f"give --shapes {name}:MIN,OPT,MAX")
    rest = tuple(dims[1:])
    return Profile(name, (1, *rest), (8, *rest), (32, *rest))


def profile_shapes(inputs: list, profiles: tuple[Profile, ...]) -> list[dict[str, tuple]]:
    """[{input: shape}] for the min, opt and max shapes (one entry for static models);
    `inputs` are InputSpecs."""
    given = {p.name: p for p in profiles}
    tiers: list[dict[str, tuple]] = [{}, {}, {}]
    for spec in inputs:
        dims = spec.dims
        p = given.get(spec.name) or default_profile(spec.name, dims) or Profile(
            spec.name, dims, dims, dims)
        for tier, shape in zip(tiers, (p.min, p.opt, p.max)):
            tier[spec.name] = tuple(shape)
    unique: list[dict[str, tuple]] = []
    for t in tiers:
        if t not in unique:
            unique.append(t)
    return unique


def shape_label(shapes: dict[str, tuple]) -> str:
    """'1x3x224x224' (inputs joined by ',')."""
    return ",".join("x".join(map(str, s)) for s in shapes.values())


def check_profiles(inputs: list, profiles: tuple[Profile, ...]) -> None:
    """--shapes against the model's inputs (InputSpecs): names, ranks and static dims."""
    specs = {i.name: i for i in inputs}
    for p in profiles:
        spec = specs.get(p.name)
        if spec is None:
            raise TrtBuildError(f"--shapes {p.name}: no such model input (inputs: "
                                f"{', '.join(specs)})")
        if len(p.min) != len(spec.dims):
            raise TrtBuildError(f"--shapes {p.name}: rank {len(p.min)} given, the input has "
                                f"rank {len(spec.dims)} {spec.shape}")
        for shape in (p.min, p.opt, p.max):
            if any(d >= 0 and d != g for d, g in zip(spec.dims, shape)):
                raise TrtBuildError(f"--shapes {p.name}: {shape} does not keep the input's "
                                    f"static dims {spec.shape}")
