"""Initial weights on JAX from one compiled program instead of one per weight shape, and none
at all when a saved model loads.

Keras creates each variable's value eagerly, and JAX compiles every random initializer for
its shape: 23 compilations of about 0.2 s for the default recipe's network on a 2-core CPU
(5.3 s of model build, the largest stage of a JAX start-up). Here the layers are built with
their variables left empty (Keras's stateless scope defers them), then one program computes
every initial value, compiled without XLA's backend optimisations, which a program run once
does not repay: 1.1 s for the same network.

The values are Keras's own initializers with their own seeds; XLA's unoptimised arithmetic may
round the last bit of a scaled random value differently (at most 6e-8 on the default recipe's
weights). Other backends, a Keras distribution (variables with layouts) and Flax NNX build as
Keras does.

A saved model loading (``values_from_the_file``) needs no initial values at all: the file's
weights replace them. Variables then start as host arrays: exact for constant initializers,
zeros for random ones, and a random one the file did not fill gets its own initializer after
the load, as Keras would have given it. Loading the default recipe's model.keras took 6.0 s,
almost all of it compiling random initializers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import keras

# Options of the one-off program: optimising it would cost more time than it saves.
_COMPILER_OPTIONS = {"xla_backend_optimization_level": 0}


@contextlib.contextmanager
def initialized_together() -> Iterator[None]:
    """Variables created inside get their initial values together on leaving the block."""
    if not _applies():
        yield
        return
    from keras.src.backend.common import global_state
    from keras.src.backend.common.stateless_scope import StatelessScope

    key = "uninitialized_variables"
    before = list(global_state.get_global_attribute(key) or [])
    try:
        with StatelessScope(initialize_variables=False):
            yield
    except BaseException:  # the half-built layers are dropped with their variables
        global_state.set_global_attribute(key, before)
        raise
    pending = list(global_state.get_global_attribute(key) or [])[len(before):]
    global_state.set_global_attribute(key, before)
    _initialize(pending)


def _applies() -> bool:
    if keras.backend.backend() != "jax" or keras.config.is_nnx_enabled():
        return False
    if keras.distribution.distribution() is not None:
        return False
    from keras.src.backend.common.stateless_scope import in_stateless_scope

    return not in_stateless_scope()


def _initialize(variables: list) -> None:
    """Computes the deferred ``variables``' values in one program and assigns them."""
    if not variables:
        return
    import jax

    specs = [(v._initializer, tuple(v._shape), v._dtype) for v in variables]

    def initial_values():
        return [initializer(shape, dtype=dtype) for initializer, shape, dtype in specs]

    values = jax.jit(initial_values).lower().compile(compiler_options=_COMPILER_OPTIONS)()
    for variable, value in zip(variables, values, strict=True):
        variable._initialize(value)
        variable._initializer = None


@contextlib.contextmanager
def values_from_the_file() -> Iterator[None]:
    """Variables created inside (by a model loading from a file) start as host arrays instead
    of compiled initializer programs; see the module's docstring."""
    if not _applies():
        yield
        return
    from keras.src.backend.jax.core import JaxVariable

    original = JaxVariable._initialize_with_initializer
    placeholders = []  # (variable, its placeholder array, its initializer)

    def from_host(variable, initializer):
        value, exact = _host_value(initializer, variable._shape, variable._dtype)
        if value is None:
            original(variable, initializer)
            return
        variable._initialize(variable._convert_to_tensor(value))
        if not exact:
            placeholders.append((variable, variable._value, initializer))

    JaxVariable._initialize_with_initializer = from_host
    try:
        yield
    finally:
        JaxVariable._initialize_with_initializer = original
    for variable, placeholder, initializer in placeholders:
        if variable._value is placeholder:  # never assigned: the file did not hold it
            variable.assign(initializer(variable._shape, dtype=variable._dtype))


def _host_value(initializer, shape, dtype):
    """(a NumPy array, whether it is the initializer's exact value), or (None, False) for an
    initializer this does not know."""
    import jax.numpy as jnp
    import numpy as np

    try:
        kind = jnp.dtype(dtype)
    except TypeError:
        return None, False
    if isinstance(initializer, keras.initializers.Zeros):
        return np.zeros(shape, kind), True
    if isinstance(initializer, keras.initializers.Ones):
        return np.ones(shape, kind), True
    if isinstance(initializer, keras.initializers.Constant):
        return np.full(shape, initializer.value, kind), True
    from keras.src.initializers.random_initializers import RandomInitializer

    if isinstance(initializer, RandomInitializer):
        return np.zeros(shape, kind), False
    return None, False
