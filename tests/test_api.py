"""The public API: `__all__` is what a Keras user calls; 0.2's internal top-level names warn."""

import pytest

import keras_prune_guard
from keras_prune_guard._compat import MOVED_FROM_TOP
from keras_prune_guard.model import surgery


def test_all_names_the_public_api_and_each_exists():
    assert len(keras_prune_guard.__all__) == len(set(keras_prune_guard.__all__)) <= 30
    for name in keras_prune_guard.__all__:
        assert getattr(keras_prune_guard, name) is not None, name
    for internal in MOVED_FROM_TOP:
        assert internal not in keras_prune_guard.__all__


def test_a_name_that_left_the_top_level_still_works_with_a_warning():
    with pytest.warns(DeprecationWarning, match=r"from `keras_prune_guard.model.surgery`"):
        found = keras_prune_guard.split_at_mask
    assert found is surgery.split_at_mask


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        keras_prune_guard.no_such_name  # noqa: B018


def test_the_version_is_0_3():
    assert keras_prune_guard.__version__ == "0.3.0"
