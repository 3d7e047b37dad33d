import numpy as np
import pytest

from fedrl.core.params import ParamSpec
from fedrl.core.update import Update


def test_flatten_and_unflatten_round_trip():
    spec = ParamSpec.from_shapes({"w": (2, 3), "b": (3,)})
    tensors = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.array([7, 8, 9], np.float32)}
    flat = spec.flatten(tensors)
    assert spec.dim == 9 and spec.offsets == (0, 6)
    np.testing.assert_array_equal(flat, np.r_[np.arange(6), 7, 8, 9])
    back = spec.unflatten(flat)
    np.testing.assert_array_equal(back["w"], tensors["w"])
    np.testing.assert_array_equal(flat[spec.slice("b")], tensors["b"])


def test_stacks_map_to_leading_client_axis():
    spec = ParamSpec.from_shapes({"w": (2, 2), "b": (2,)})
    stack = np.arange(12, dtype=np.float32).reshape(2, 6)
    named = spec.unflatten(stack)
    assert named["w"].shape == (2, 2, 2) and named["b"].shape == (2, 2)
    np.testing.assert_array_equal(named["b"][1], [10, 11])
    np.testing.assert_array_equal(spec.flatten(named, stacked=True), stack)


def test_wrong_shapes_are_named():
    spec = ParamSpec.from_shapes({"w": (2, 2)})
    with pytest.raises(ValueError, match="'w' has shape"):
        spec.flatten({"w": np.zeros((3, 2))})
    with pytest.raises(ValueError, match="expected last dimension 4"):
        spec.unflatten(np.zeros(5, np.float32))


def test_update_requires_float32_vector():
    with pytest.raises(ValueError, match="float32 vector"):
        Update(client_id=1, base_version=0, delta=np.zeros(3), env_steps=1)
