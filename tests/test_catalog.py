"""multiseg.catalog reads loss and metric options from the source, without importing Keras:
the reading must equal the imported classes' signatures."""

from __future__ import annotations

import pytest

from multiseg import catalog
from multiseg.losses import LOSSES
from multiseg.metrics import METRICS
from multiseg.tensors import keyword_options


@pytest.mark.parametrize("name", sorted(catalog.LOSS_CLASSES))
def test_loss_options_equal_the_signature(name):
    expected = keyword_options(LOSSES[name], catalog.LOSS_NOT_OPTIONS)
    assert expected  # every loss has options, so an empty reading would be a bug
    assert catalog.loss_options(name) == expected


@pytest.mark.parametrize("name", sorted(catalog.METRIC_CLASSES))
def test_metric_options_equal_the_signature(name):
    assert catalog.metric_options(name) == keyword_options(METRICS[name],
                                                           catalog.METRIC_NOT_OPTIONS)


def test_constants_and_inherited_constructors_are_followed():
    # Dice has no __init__ of its own, and smooth_nr defaults to a constant of another module.
    from multiseg.losses.checks import DEFAULT_SMOOTH

    options = catalog.loss_options("dice")
    assert options["smooth_nr"] == DEFAULT_SMOOTH and options["squared"] is False


def test_the_registries_are_the_catalog():
    assert list(LOSSES) == list(catalog.LOSS_CLASSES)
    assert list(METRICS) == list(catalog.METRIC_CLASSES)
    assert all(LOSSES[n].__name__ == c for n, (_, c) in catalog.LOSS_CLASSES.items())
