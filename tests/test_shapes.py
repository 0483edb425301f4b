import pytest

from trtbuild.errors import TrtBuildError
from trtbuild.onnx.shapes import check_rank, parse_input_spec, parse_profile_spec


def test_input_spec():
    assert parse_input_spec("input:1x3x224x224") == ("input", (1, 3, 224, 224))
    assert parse_input_spec("ns:x:2X4") == ("ns:x", (2, 4))


@pytest.mark.parametrize("spec", ["input", ":1x2", "input:", "input:1x0", "input:ax3", "in:1,2"])
def test_bad_input_specs(spec):
    with pytest.raises(TrtBuildError, match="--input"):
        parse_input_spec(spec)


def test_profile_spec():
    p = parse_profile_spec("x:1x3x8x8,8x3x8x8,32x3x8x8")
    assert (p.min[0], p.opt[0], p.max[0]) == (1, 8, 32)
    assert parse_profile_spec("x:4x2").min == (4, 2)
    with pytest.raises(TrtBuildError, match="MIN <= OPT <= MAX"):
        parse_profile_spec("x:8x3,1x3,32x3")
    with pytest.raises(TrtBuildError, match="same rank"):
        parse_profile_spec("x:1x3,8x3x1,32x3")


def test_check_rank():
    check_rank("x", (4, 3), ["batch", 3])
    with pytest.raises(TrtBuildError, match="does not fit"):
        check_rank("x", (4, 5), ["batch", 3])
