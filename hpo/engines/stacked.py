"""The stacked engine: every fold of a batch of trials trained as one model in one TF graph.

A trial of the course study is 125,000 optimizer steps of a 47-50-25-7 network; run one
``model.fit`` per fold and nearly all of the time is per-step and per-op overhead. Here the K folds
of T trials (``M = K*T`` members) are one stacked network whose weights carry leading ``[K, T]``
axes, trained by a ``tf.while_loop`` over epochs and steps inside one ``tf.function`` (Python runs
once per chunk of epochs, not per step).

What is trained is exactly what Keras trains; ``tests/test_stacked_engine.py`` compares the
validation probabilities with ``model.fit`` of the reference engine's model (same initial weights,
same batch order) to about 1e-7:

* batch size, Glorot-uniform kernels, zero biases, softmax with sparse categorical crossentropy
  averaged over the batch's real rows (Keras ``sum_over_batch_size``);
* regularization as ``keras.regularizers`` compute it: kernel ``l1*sum|W| + l2*sum W^2`` added
  every step, activity ``(l1*sum|h| + l2*sum h^2) / batch_rows`` over the layer's output after its
  activation (Keras >= 3.14 divides by the batch size); a coefficient of 0 switches a term off,
  so plans with different placements share one graph;
* Adam / SGD / RMSprop with Keras' own formulas and defaults. Every member has its own slots, and
  as the updates are elementwise and the loss is a sum of member losses, its own trajectory;
* each epoch reshuffles each fold's training rows (numpy RNG seeded from ``fold_seed``);
* each fold's inputs are its rows preprocessed with its own statistics, bit for bit the
  ``x_train`` of :class:`hpo.data.Fold`: the folds read one shared table (in place, never
  copied per fold), and the fold's scaling and gap fill are applied in the graph as each batch
  is formed, in the same float32 operations numpy uses.

Where the speed comes from, in the order it matters: loops over epochs and steps inside the graph
(one Python call per chunk of epochs, not per step); the backward pass and the regularizers'
gradients written out instead of autodiff; with ``shared_order`` (the default) the T trials of a
fold see the same batches, so the first layer is one wide matmul ``[B, F] x [F, T*U1]`` per fold;
matmuls on oneDNN while each elementwise chain between them (softmax to its gradient, bias and
activation, activation backward with the activity gradient, the whole optimizer update over one
flat parameter buffer) is one XLA-compiled kernel. The optimizer update follows Keras' formulas
exactly (TF's fused Adam kernel does not: it rounds ``1 - beta_2`` differently). One thread per
process is the fastest setting for a network this small. The measured effect of each lever is
in ``bench/README.md``.

Members whose loss goes non-finite are marked diverged: their folds predict -1 (wrong), and as
nothing couples members, the others are untouched. Pruned trials are dropped from the graph
(a smaller stacked model continues) once enough of the batch is gone.
"""

from __future__ import annotations

import gc
import itertools
import math
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hpo import stops
from hpo.data import Fold, Table, aligned_empty, is_aligned
from hpo.engines.contract import EvaluationResult, Monitor, NullMonitor, oof_accuracy
from hpo.engines.keras_model import import_keras, tf
from hpo.lazy import lazy_import
from hpo.log import get_logger
from hpo.seeds import fold_seed
from hpo.space import RegularizationPlan
from hpo.spec import ModelSpec

if TYPE_CHECKING:
    import numpy as np
else:
    np = lazy_import("numpy")

__all__ = ["InitialWeights", "StackedEngine", "clear_graph_cache"]

_log = get_logger("engines.stacked")

# Keras' defaults for the optimizers the study file allows.
_ADAM_BETA_1 = 0.9
_ADAM_BETA_2 = 0.999
_EPSILON = 1e-7
_RMSPROP_RHO = 0.9

# Compiled graphs (with their variables) are reused across calls of the same shape; a bounded
# cache keeps a long-lived worker's memory flat.
_GRAPH_CACHE_SIZE = 8
_graph_cache: OrderedDict[_Layout, _StackedGraph] = OrderedDict()
# The tensors of each table in use (the table's own memory): gone when the table is.
_table_cache: weakref.WeakKeyDictionary[Table, _TableTensors] = weakref.WeakKeyDictionary()

# Parameter blocks start on 64-byte boundaries (16 floats) so slicing one out copies nothing.
_ALIGN = 16

# Floats in one hidden output while scoring held-out rows (16 MiB); more rows go in chunks.
_PROBE_FLOATS = 4 << 20

# Bytes of batch orders handed to one graph call: epochs are split into several calls (the same
# RNG draws in the same order, so nothing trained changes) rather than hold 25 epochs of row
# orders of a million-row table at once.
_ORDER_BYTES = 32 << 20

# Seconds one graph call should take at most: a stop request is checked between calls
# (hpo.stops), so this bounds how long a stop waits for training. Measured as training goes
# (the first call of a graph also traces it), never assumed for a machine.
_CALL_SECONDS = 1.0

InitialWeights = Sequence[Sequence[Sequence["np.ndarray"]]]
"""Per plan, per fold: the Keras ``get_weights()`` list ``[W1, b1, W2, b2, ..., Wout, bout]``."""


def clear_graph_cache() -> None:
    """Drop every cached graph and its variables, and the tensors of tables (tests; or to hand
    memory back)."""
    _graph_cache.clear()
    _table_cache.clear()
    gc.collect()


@dataclass(frozen=True)
class _Layout:
    """Everything a compiled graph depends on; the graph cache key."""

    fold_sizes: tuple[int, ...]
    valid_sizes: tuple[int, ...]
    trials: int
    n_inputs: int  # features + the ones column that carries the first layer's bias
    hidden: tuple[int, ...]
    n_classes: int
    batch_size: int
    shared: bool
    activation: str
    optimizer: str
    learning_rate: float
    gaps: bool = False  # the table has gaps (NaN), filled per fold as batches are formed

    @property
    def folds(self) -> int:
        return len(self.fold_sizes)

    @property
    def n_features(self) -> int:
        return self.n_inputs - 1

    @property
    def probe_rows(self) -> int:
        """Held-out rows per fold scored at once: the hidden outputs of a chunk (``[K, T, rows,
        U]``) stay near 16 MiB however many rows the folds hold out."""
        widest = max(*self.hidden, self.n_classes, self.n_inputs)
        rows = _PROBE_FLOATS // (self.folds * self.trials * widest)
        return max(1, min(self.n_valid, rows))

    @property
    def probe_chunks(self) -> int:
        return math.ceil(self.n_valid / self.probe_rows)

    @property
    def steps(self) -> int:
        return math.ceil(max(self.fold_sizes) / self.batch_size)

    @property
    def full_steps(self) -> int:
        """Steps at which every fold has a full batch: these need no row masks."""
        return min(self.fold_sizes) // self.batch_size

    @property
    def lockstep(self) -> bool:
        """Every fold takes the same number of optimizer steps per epoch."""
        return len({math.ceil(n / self.batch_size) for n in self.fold_sizes}) == 1

    @property
    def n_train(self) -> int:
        return max(self.fold_sizes)

    @property
    def n_valid(self) -> int:
        return max(self.valid_sizes)

    def tail_rows(self) -> np.ndarray:
        """Real rows of each fold in each tail step (after the full steps): ``[tail, K]``."""
        b = self.batch_size
        return np.array(
            [
                [max(0, min(b, n - s * b)) for n in self.fold_sizes]
                for s in range(self.full_steps, self.steps)
            ],
            dtype=np.int64,
        ).reshape(self.steps - self.full_steps, self.folds)


class _StackedGraph:
    """Variables and compiled functions for one :class:`_Layout`.

    Parameter blocks (K folds, T trials, F inputs with the ones column, U units, C classes):

    * shared order: first kernel ``[K, F, T*U1]`` (last row = bias); own order: ``[K, T, F, U1]``;
    * later kernels ``[K, T, U, U']`` and biases ``[K, T, 1, U']``.

    They live in one flat variable (optimizer slots likewise). Hidden outputs are ``[K, T, B, U]``.
    """

    def __init__(self, layout: _Layout) -> None:
        self.layout = layout
        lay = layout
        k, t, f, c = lay.folds, lay.trials, lay.n_inputs, lay.n_classes
        widths = (*lay.hidden, c)
        zeros = tf.zeros
        shapes: list[tuple[int, ...]] = [
            (k, f, t * widths[0]) if lay.shared else (k, t, f, widths[0])
        ]
        for fan_in, fan_out in itertools.pairwise(widths):
            shapes += [(k, t, fan_in, fan_out), (k, t, 1, fan_out)]
        self.shapes = shapes
        self.sizes = [math.prod(shape) for shape in shapes]
        self.offsets: list[int] = []
        total = 0
        for size in self.sizes:
            self.offsets.append(total)
            total += -(-size // _ALIGN) * _ALIGN
        self.total = total
        self.flat = tf.Variable(zeros([total]), trainable=False)
        n_slots = {"adam": 2, "rmsprop": 1, "sgd": 0}[lay.optimizer]
        self.slots = [tf.Variable(zeros([total]), trainable=False) for _ in range(n_slots)]
        # Optimizer step count: one for all, or per fold where folds sit out tail steps.
        self.step_count = tf.Variable(zeros([] if lay.lockstep else [k]), trainable=False)
        # The fold of every flat element (blocks are [K, ...]): per-fold step sizes and freezing.
        fold_of = np.zeros(total, np.int32)
        for offset, size in zip(self.offsets, self.sizes, strict=True):
            fold_of[offset : offset + size] = np.repeat(np.arange(k), size // k)
        self.fold_of = tf.constant(fold_of)
        # Kernel regularizers as flat coefficients: l1 and 2*l2 per element, 0 off the kernels.
        self.kernel_l1 = tf.Variable(zeros([total]), trainable=False)
        self.kernel_l2 = tf.Variable(zeros([total]), trainable=False)
        # Activity regularizers per hidden layer: l1 and 2*l2 per trial, shaped [1, T, 1, 1].
        self.activity = [
            (
                tf.Variable(zeros([1, t, 1, 1]), trainable=False),
                tf.Variable(zeros([1, t, 1, 1]), trainable=False),
            )
            for _ in lay.hidden
        ]

        # The data is the table, passed to each call (one copy for every fold, graph and call);
        # per fold only its scaling and the positions of its held-out rows live here.
        features = lay.n_features
        self.shift = tf.Variable(zeros([k, 1, features]), trainable=False)
        self.scale = tf.Variable(tf.ones([k, 1, features]), trainable=False)
        self.fill = tf.Variable(zeros([k, 1, features]), trainable=False)
        self.valid_rows = tf.Variable(
            tf.zeros([k, lay.probe_chunks * lay.probe_rows], tf.int32), trainable=False
        )
        tail = lay.steps - lay.full_steps
        self.tail_weights = tf.Variable(zeros([tail, k, 1, lay.batch_size, 1]), trainable=False)
        self.tail_active = tf.Variable(zeros([tail, k]), trainable=False)

        # The elementwise kernels belong to this graph: they go (with their traces) when it does.
        self.kernels = _kernels()
        perm_shape = [None, k, lay.steps * lay.batch_size]
        if not lay.shared:
            perm_shape = [None, k, t, lay.steps * lay.batch_size]
        table = [
            tf.TensorSpec([None, lay.n_features], tf.float32),  # the table's rows
            tf.TensorSpec([None, c], tf.float32),  # their labels, one-hot
        ]
        self.train = tf.function(
            self._train,
            input_signature=[tf.TensorSpec(perm_shape, tf.int32), *table],
            autograph=False,
        )
        self.probe = tf.function(
            lambda x: self._probe(x, probabilities=False),
            input_signature=table[:1],
            autograph=False,
        )
        self.probe_probabilities = tf.function(
            lambda x: self._probe(x, probabilities=True),
            input_signature=table[:1],
            autograph=False,
        )

    # --- set-up -------------------------------------------------------------------------------

    def load(
        self,
        folds: Sequence[Fold],
        valid_rows: Sequence[np.ndarray],
        plans: Sequence[RegularizationPlan],
        params: Sequence[np.ndarray],
        slots: Sequence[Sequence[np.ndarray]] | None = None,
        step_count: np.ndarray | None = None,
    ) -> None:
        """Assign the folds' scalings and held-out rows, coefficients, parameters and optimizer
        state (zero unless given). ``valid_rows[i]``: fold i's held-out rows as table rows."""
        lay = self.layout
        k = lay.folds
        self.shift.assign(np.stack([f.scaling.shift for f in folds])[:, None])
        self.scale.assign(np.stack([f.scaling.scale for f in folds])[:, None])
        self.fill.assign(np.stack([f.scaling.fill for f in folds])[:, None])
        # Padding scores table row 0 (a real row: finite), and is never read back.
        padded = np.zeros(self.valid_rows.shape, np.int32)
        for i, rows in enumerate(valid_rows):
            padded[i, : len(rows)] = rows
        self.valid_rows.assign(padded)

        l1_blocks, l2_blocks = [], []
        for i, shape in enumerate(self.shapes):
            layer = (i + 1) // 2  # block 0: hidden layer 0; blocks 2j-1, 2j: layer j
            if layer < len(lay.hidden) and i % 2 == (0 if layer == 0 else 1):
                l1, l2 = self._kernel_coefficients(plans, layer)
                l1_blocks.append(np.broadcast_to(l1, shape))
                l2_blocks.append(np.broadcast_to(l2, shape))
            else:  # biases and the output layer carry no penalty
                l1_blocks.append(np.zeros(shape, np.float32))
                l2_blocks.append(np.zeros(shape, np.float32))
        self.kernel_l1.assign(self.flatten(l1_blocks))
        self.kernel_l2.assign(self.flatten(l2_blocks))
        for layer, (l1_var, l2_var) in enumerate(self.activity):
            penalties = [plan.layers[layer] for plan in plans]
            l1_var.assign(
                np.array([p.l1_activity for p in penalties], np.float32).reshape(1, -1, 1, 1)
            )
            # d/dh of l2*sum(h^2) is 2*l2*h: the 2 is folded in once here.
            l2_var.assign(
                2 * np.array([p.l2_activity for p in penalties], np.float32).reshape(1, -1, 1, 1)
            )

        rows = lay.tail_rows()
        weights = np.zeros((len(rows), k, 1, lay.batch_size, 1), np.float32)
        for s, per_fold in enumerate(rows):
            for i, n in enumerate(per_fold):
                weights[s, i, 0, :n, 0] = 1.0 / n if n else 0.0
        self.tail_weights.assign(weights)
        self.tail_active.assign((rows > 0).astype(np.float32))

        self.flat.assign(self.flatten(params))
        for n, slot in enumerate(self.slots):
            slot.assign(self.flatten(slots[n]) if slots else np.zeros(self.total, np.float32))
        if step_count is None:
            step_count = np.zeros(self.step_count.shape, np.float32)
        self.step_count.assign(step_count)

    def _kernel_coefficients(
        self, plans: Sequence[RegularizationPlan], layer: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """l1 and 2*l2 of hidden ``layer``'s kernel, broadcastable to its block."""
        lay = self.layout
        l1 = np.array([plan.layers[layer].l1_kernel for plan in plans], np.float32)
        l2 = 2 * np.array([plan.layers[layer].l2_kernel for plan in plans], np.float32)
        if layer > 0:
            return l1.reshape(1, -1, 1, 1), l2.reshape(1, -1, 1, 1)
        # The first kernel's last row is the bias, which kernel regularizers leave alone.
        rows = np.ones(lay.n_inputs, np.float32)
        rows[-1] = 0.0
        units = lay.hidden[0]
        if lay.shared:
            return (
                (rows[:, None] * np.repeat(l1, units)[None, :])[None],
                (rows[:, None] * np.repeat(l2, units)[None, :])[None],
            )
        return (
            (l1[:, None] * rows[None, :])[None, :, :, None],
            (l2[:, None] * rows[None, :])[None, :, :, None],
        )

    def flatten(self, arrays: Sequence[np.ndarray]) -> np.ndarray:
        flat = np.zeros(self.total, np.float32)
        for array, offset, size, shape in zip(
            arrays, self.offsets, self.sizes, self.shapes, strict=True
        ):
            if array.shape != shape:
                raise ValueError(f"parameter block of shape {array.shape}, expected {shape}")
            flat[offset : offset + size] = array.ravel()
        return flat

    def unflatten(self, flat: np.ndarray) -> list[np.ndarray]:
        return [
            flat[offset : offset + size].reshape(shape)
            for offset, size, shape in zip(self.offsets, self.sizes, self.shapes, strict=True)
        ]

    def _blocks(self, flat: Any) -> list[Any]:
        return [
            tf.reshape(tf.slice(flat, [offset], [size]), shape)
            for offset, size, shape in zip(self.offsets, self.sizes, self.shapes, strict=True)
        ]

    # --- the graph ------------------------------------------------------------------------------

    def _forward(
        self, x: Any, params: Sequence[Any], rows: int
    ) -> tuple[list[Any], list[Any], Any]:
        """Hidden outputs (``[K, T, rows, U]``), their pre-activations and the logits."""
        lay = self.layout
        k, t, u1 = lay.folds, lay.trials, lay.hidden[0]
        n_hidden = len(lay.hidden)
        z = tf.matmul(x, params[0])
        if lay.activation == "relu":
            # No pre-activations kept: the ReLU backward needs only the outputs.
            if lay.shared:
                # [K, rows, T*U1] -> [K, T, rows, U1]: later layers are batched per member.
                # (oneDNN's transpose; XLA's took twice as long for this shape.)
                z = tf.transpose(tf.reshape(z, [k, rows, t, u1]), [0, 2, 1, 3])
            hs = [tf.nn.relu(z)]
            for j in range(1, n_hidden):
                z = tf.matmul(hs[-1], params[2 * j - 1])
                hs.append(self.kernels["bias_relu"](z, params[2 * j]))
            return hs, [], tf.matmul(hs[-1], params[2 * n_hidden - 1]) + params[2 * n_hidden]
        act = _activation(lay.activation)
        if lay.shared:
            z = tf.transpose(tf.reshape(z, [k, rows, t, u1]), [0, 2, 1, 3])
        zs, hs = [z], [act(z)]
        for j in range(1, n_hidden):
            zs.append(tf.matmul(hs[-1], params[2 * j - 1]) + params[2 * j])
            hs.append(act(zs[-1]))
        return hs, zs, tf.matmul(hs[-1], params[2 * n_hidden - 1]) + params[2 * n_hidden]

    def _inputs(self, rows: Any, table: Any, expand: bool = False) -> Any:
        """The network inputs of table rows ``rows`` (``[K, ...]``): each fold's scaling and gap
        fill applied to the gathered rows, then the ones column that carries the first bias.
        ``expand``: ``rows`` is ``[K, T, B]`` (own order)."""
        shift, scale, fill = (v.read_value() for v in (self.shift, self.scale, self.fill))
        if expand:
            shift, scale, fill = (v[:, None] for v in (shift, scale, fill))
        return self.kernels["inputs"](tf.gather(table, rows), shift, scale, fill, self.layout.gaps)

    def _step(
        self,
        idx: Any,
        row_weights: Any,
        fold_active: Any,
        activity: Sequence[tuple[Any, Any]],
        x_table: Any,
        y_table: Any,
    ) -> None:
        """One optimizer step of every member on the batch rows ``idx`` (table rows).

        ``row_weights`` is ``1/B`` (full steps) or ``[K, 1, B, 1]`` holding ``1/real_rows`` on real
        rows and 0 on padding; ``fold_active`` is None or ``[K]`` (1 where the fold has rows);
        ``activity`` per hidden layer ``(l1, 2*l2) * row_weights`` in the layer's output shape.
        """
        lay = self.layout
        k, t, b = lay.folds, lay.trials, lay.batch_size
        params = self._blocks(self.flat.read_value())
        x = self._inputs(idx, x_table, expand=not lay.shared)  # [K, B, F] or [K, T, B, F]
        y = tf.gather(y_table, idx)  # [K, B, C] or [K, T, B, C]
        if lay.shared:
            y = y[:, None]  # [K, 1, B, C]

        relu = lay.activation == "relu"
        tape = None
        if relu:
            hs, zs, logits = self._forward(x, params, b)
        else:
            # Other activations: their derivative by autodiff, one elementwise op per layer.
            with tf.GradientTape(persistent=True) as tape:
                tape.watch(params)
                hs, zs, logits = self._forward(x, params, b)

        n_hidden = len(lay.hidden)
        grads: list[Any] = [None] * len(params)
        # d(mean crossentropy)/d(logits) = (softmax - onehot) / real_rows, 0 on padding.
        dz, grads[-1] = self.kernels["output_grad"](logits, y, row_weights)
        # Layer j (1..n_hidden; n_hidden is the output layer) reads hidden output hs[j-1] and
        # owns params[2j-1] (kernel) and params[2j] (bias).
        for j in range(n_hidden, 0, -1):
            grads[2 * j - 1] = tf.matmul(hs[j - 1], dz, adjoint_a=True)
            dh = tf.matmul(dz, params[2 * j - 1], adjoint_b=True)
            # Every penalty term is built (a coefficient 0 switches it off): graphs depend only
            # on shapes, so a worker compiles a few, not one per mix of penalties.
            c1, c2 = activity[j - 1]
            bias_grad = j > 1 or not lay.shared  # the first layer's bias is a kernel row
            if relu:
                dz, bias = self.kernels["relu_grad"](dh, hs[j - 1], c1, c2, bias_grad)
            else:
                assert tape is not None
                dh = _activity_grad(dh, hs[j - 1], c1, c2)
                dz = tape.gradient(hs[j - 1], zs[j - 1], output_gradients=dh)
                bias = tf.reduce_sum(dz, axis=2, keepdims=True) if bias_grad else None
            if j > 1:
                grads[2 * j - 2] = bias
        if lay.shared:
            dz = tf.reshape(tf.transpose(dz, [0, 2, 1, 3]), [k, b, t * lay.hidden[0]])
        grads[0] = tf.matmul(x, dz, adjoint_a=True)
        del tape
        self._apply(grads, fold_active)

    def _apply(self, grads: Sequence[Any], fold_active: Any) -> None:
        """The optimizer update of every parameter, with the kernel regularizers' gradient."""
        lay = self.layout
        pieces = []
        ends = [*self.offsets[1:], self.total]
        for grad, size, offset, end in zip(grads, self.sizes, self.offsets, ends, strict=True):
            pieces.append(tf.reshape(grad, [-1]))
            if end - offset > size:
                pieces.append(tf.zeros([end - offset - size]))
        grad = tf.concat(pieces, axis=0)
        if lay.lockstep:
            active = None
            self.step_count.assign_add(1.0)
        else:
            # Folds step on their own clocks; a fold without rows in this step stays frozen.
            active = fold_active if fold_active is not None else tf.ones([lay.folds])
            self.step_count.assign_add(active)
        new = self.kernels["update"](
            lay.optimizer,
            lay.learning_rate,
            self.flat.read_value(),
            tuple(slot.read_value() for slot in self.slots),
            grad,
            self.step_count.read_value(),
            self.kernel_l1.read_value(),
            self.kernel_l2.read_value(),
            None if active is None else self.fold_of,
            active,
        )
        for variable, value in zip([self.flat, *self.slots], new, strict=True):
            variable.assign(value)

    def _train(self, perm: Any, x_table: Any, y_table: Any) -> Any:
        """Train ``perm.shape[0]`` epochs; ``perm[e]`` holds each fold's training rows in this
        epoch's order (as table rows, padded); ``x_table`` and ``y_table`` are the table."""
        lay = self.layout
        b = lay.batch_size
        full_weight = tf.constant(1.0 / b)

        def coefficients(row_weights: Any) -> list[tuple[Any, Any]]:
            # Full-shape: XLA's elementwise loops vectorize when no operand is broadcast.
            shapes = [[lay.folds, lay.trials, b, units] for units in lay.hidden]
            return [
                (
                    tf.broadcast_to(l1.read_value() * row_weights, shape),
                    tf.broadcast_to(l2.read_value() * row_weights, shape),
                )
                for (l1, l2), shape in zip(self.activity, shapes, strict=True)
            ]

        full_activity = coefficients(full_weight)  # loop-invariant

        def epoch(e: Any) -> Any:
            order = perm[e]

            def step(s: Any) -> Any:
                self._step(
                    self._batch(order, s * b), full_weight, None, full_activity, x_table, y_table
                )
                return s + 1

            tf.while_loop(lambda s: s < lay.full_steps, step, [tf.constant(0)])
            # The last, partial batches: masked rows, and folds without rows sit the step out.
            for j in range(lay.steps - lay.full_steps):
                weights = self.tail_weights[j]
                self._step(
                    self._batch(order, (lay.full_steps + j) * b),
                    weights,
                    self.tail_active[j],
                    coefficients(weights),
                    x_table,
                    y_table,
                )
            return e + 1

        return tf.while_loop(lambda e: e < tf.shape(perm)[0], epoch, [tf.constant(0)])

    def _batch(self, order: Any, start: Any) -> Any:
        """Row indices of the batch at ``start`` (static shape, unlike ``order[..., a:b]``)."""
        lay = self.layout
        if lay.shared:
            return tf.slice(order, [0, start], [lay.folds, lay.batch_size])
        return tf.slice(order, [0, 0, start], [lay.folds, lay.trials, lay.batch_size])

    def _probe(self, x_table: Any, *, probabilities: bool) -> tuple[Any, Any]:
        """Each member's predicted class of every held-out row (or, with ``probabilities``, its
        probabilities) and a finite flag ``[K, T]``.

        Rows go through in chunks of :attr:`_Layout.probe_rows`, so scoring a large fold holds a
        chunk's hidden outputs, never the whole fold's. The output is by chunk, ``[chunks, K,
        T, rows(, C)]``: the caller puts the chunks in row order (numpy; TF's int32 transpose
        would print a oneDNN notice on machines without AVX-512)."""
        lay = self.layout
        k, t, r = lay.folds, lay.trials, lay.probe_rows
        params = self._blocks(self.flat.read_value())
        classes = tf.range(lay.n_classes)

        def chunk(c: Any) -> tuple[Any, Any]:
            rows = tf.slice(self.valid_rows, [0, c * r], [k, r])
            x = self._inputs(rows, x_table)
            if not lay.shared:
                x = tf.broadcast_to(x[:, None], [k, t, r, lay.n_inputs])
            _, _, logits = self._forward(x, params, r)
            p = tf.nn.softmax(logits)
            finite = tf.reduce_all(tf.math.is_finite(p), axis=[2, 3])
            if probabilities:
                return p, finite
            # numpy's argmax: the first of equal maxima.
            first = tf.where(p >= tf.reduce_max(p, axis=-1, keepdims=True), classes, lay.n_classes)
            return tf.reduce_min(first, axis=-1), finite

        if lay.probe_chunks == 1:
            out, finite = chunk(tf.constant(0))
            out = out[None]
        else:

            def body(c: Any, parts: Any, finite: Any) -> tuple[Any, Any, Any]:
                out, ok = chunk(c)
                return c + 1, parts.write(c, out), finite & ok

            dtype = tf.float32 if probabilities else tf.int32
            parts = tf.TensorArray(dtype, size=lay.probe_chunks)
            _, parts, finite = tf.while_loop(
                lambda c, *_: c < lay.probe_chunks,
                body,
                [tf.constant(0), parts, tf.ones([k, t], tf.bool)],
            )
            out = parts.stack()
        # Non-finite weights, or finite ones whose penalty overflows: Keras would see that loss.
        l1s = self._blocks(self.kernel_l1.read_value())
        l2s = self._blocks(self.kernel_l2.read_value())
        for i, (p, l1, l2) in enumerate(zip(params, l1s, l2s, strict=True)):
            finite &= _member_all_finite(p, i == 0, lay)
            penalty = l1 * tf.abs(p) + 0.5 * l2 * tf.square(p)
            finite &= _member_all_finite(penalty, i == 0, lay, total=True)
        return out, finite


def _member_all_finite(tensor: Any, first: bool, lay: _Layout, *, total: bool = False) -> Any:
    """``[K, T]``: whether each member's slice of a parameter block (or its sum) is finite."""
    if first and lay.shared:
        tensor = tf.reshape(tensor, [lay.folds, lay.n_inputs, lay.trials, lay.hidden[0]])
        axes = [1, 3]
    else:
        axes = [2, 3]
    if total:
        return tf.math.is_finite(tf.reduce_sum(tensor, axis=axes))
    return tf.reduce_all(tf.math.is_finite(tensor), axis=axes)


# --- elementwise kernels ----------------------------------------------------------------------
# Each runs as one XLA-compiled kernel where XLA works (several TF ops otherwise, same formulas).


def _output_grad(logits: Any, y: Any, row_weights: Any) -> tuple[Any, Any]:
    """dz = (softmax(logits) - onehot) * row_weights, and the output bias gradient."""
    e = tf.exp(logits - tf.reduce_max(logits, axis=-1, keepdims=True))
    dz = (e / tf.reduce_sum(e, axis=-1, keepdims=True) - y) * row_weights
    return dz, tf.reduce_sum(dz, axis=2, keepdims=True)


def _activity_grad(dh: Any, h: Any, c1: Any, c2: Any) -> Any:
    """Add d/dh of the activity penalty: ``c1*sign(h) + c2*h`` (c1 = l1/rows, c2 = 2*l2/rows)."""
    return dh + c1 * tf.sign(h) + c2 * h


def _inputs(x: Any, shift: Any, scale: Any, fill: Any, gaps: bool) -> Any:
    """A fold's network inputs from raw table rows: ``(x - shift) / scale`` (float32, as
    :meth:`hpo.data.Scaling.apply` computes it), a gap ``fill``; then a column of ones."""
    z = (x - shift) / scale
    if gaps:
        z = tf.where(tf.math.is_nan(x), fill, z)
    return tf.concat([z, tf.ones_like(z[..., :1])], axis=-1)


def _bias_relu(z: Any, bias: Any) -> Any:
    return tf.nn.relu(z + bias)


def _relu_grad(dh: Any, h: Any, c1: Any, c2: Any, bias: bool) -> tuple[Any, Any]:
    """ReLU backward with the activity penalty; and the layer's bias gradient when ``bias``."""
    # sign(h) is 1 wherever the ReLU lets a gradient through, so the l1 term needs no sign.
    dz = tf.where(h > 0, dh + c1 + c2 * h, tf.zeros_like(dh))
    return dz, tf.reduce_sum(dz, axis=2, keepdims=True) if bias else None


def _update(
    optimizer: str,
    lr: float,
    var: Any,
    slots: tuple[Any, ...],
    grad: Any,
    step: Any,
    l1: Any,
    l2: Any,
    fold_of: Any | None,
    active: Any | None,
) -> tuple[Any, ...]:
    """Keras' update of ``optimizer`` over the flat parameters; returns (var, *slots).

    ``grad`` is the data gradient; the kernel penalties add ``l1*sign(W) + l2*W`` (l2 holds 2*l2).
    ``step`` is the step count after this step, a scalar or, with ``fold_of`` and ``active``,
    one per fold; then folds whose ``active`` is 0 keep their values.
    """
    grad = grad + l1 * tf.sign(var) + l2 * var
    if optimizer == "adam":
        m, v = slots
        alpha = lr * tf.sqrt(1.0 - tf.pow(_ADAM_BETA_2, step)) / (1.0 - tf.pow(_ADAM_BETA_1, step))
        if fold_of is not None:
            alpha = tf.gather(alpha, fold_of)
        m = m + (grad - m) * (1.0 - _ADAM_BETA_1)
        v = v + (tf.square(grad) - v) * (1.0 - _ADAM_BETA_2)
        new: tuple[Any, ...] = (var - (m * alpha) / (tf.sqrt(v) + _EPSILON), m, v)
    elif optimizer == "rmsprop":
        (velocity,) = slots
        velocity = _RMSPROP_RHO * velocity + (1.0 - _RMSPROP_RHO) * tf.square(grad)
        new = (var - (lr * grad) / tf.sqrt(velocity + _EPSILON), velocity)
    else:
        new = (var - grad * lr,)
    if fold_of is None:
        return new
    on = tf.gather(active, fold_of) > 0
    return tuple(tf.where(on, n, o) for n, o in zip(new, (var, *slots), strict=True))


_KERNELS: dict[str, Callable[..., Any]] = {
    "inputs": _inputs,
    "output_grad": _output_grad,
    "bias_relu": _bias_relu,
    "relu_grad": _relu_grad,
    "update": _update,
}


def _kernels() -> dict[str, Callable[..., Any]]:
    """The elementwise kernels, each XLA-compiled (the plain functions where XLA fails)."""
    if not _xla_works():
        return dict(_KERNELS)
    return {
        name: tf.function(fn, jit_compile=True, autograph=False) for name, fn in _KERNELS.items()
    }


_xla_state: list[bool] = []


def _xla_works() -> bool:
    """Whether this TensorFlow build compiles with XLA on this machine (checked once)."""
    if not _xla_state:
        try:
            # Eagerly, even when first asked while a graph is being traced.
            with tf.init_scope():
                probe = tf.function(lambda x: x * 2.0 + 1.0, jit_compile=True)
                _xla_state.append(bool(probe(tf.constant([1.0])).numpy()[0] == 3.0))
        except Exception as exc:  # no XLA in this build: the same formulas as plain TF ops
            _log.info("XLA unavailable (%s); elementwise kernels run as plain TF ops", exc)
            _xla_state.append(False)
    return _xla_state[0]


def _activation(name: str) -> Any:
    if name == "relu":
        return tf.nn.relu
    keras = import_keras()
    return keras.activations.get(name)


def _graph_for(layout: _Layout) -> _StackedGraph:
    graph = _graph_cache.get(layout)
    if graph is None:
        graph = _StackedGraph(layout)
        _graph_cache[layout] = graph
        while len(_graph_cache) > _GRAPH_CACHE_SIZE:
            _graph_cache.popitem(last=False)
            gc.collect()
    _graph_cache.move_to_end(layout)
    return graph


def _glorot(rng: np.random.Generator, widths: Sequence[int]) -> list[np.ndarray]:
    """Keras' ``[W1, b1, ..., Wout, bout]`` with Glorot-uniform kernels and zero biases."""
    weights: list[np.ndarray] = []
    for fan_in, fan_out in itertools.pairwise(widths):
        limit = math.sqrt(6.0 / (fan_in + fan_out))
        weights.append(rng.uniform(-limit, limit, (fan_in, fan_out)).astype(np.float32))
        weights.append(np.zeros(fan_out, np.float32))
    return weights


def _stack(layout: _Layout, members: Sequence[Sequence[Sequence[np.ndarray]]]) -> list[np.ndarray]:
    """Stacked parameter arrays from per-member Keras weights, ``members[fold][trial]``."""
    k, t = layout.folds, layout.trials
    widths = (layout.n_inputs - 1, *layout.hidden, layout.n_classes)
    u1 = widths[1]
    if layout.shared:
        first = np.zeros((k, layout.n_inputs, t * u1), np.float32)
    else:
        first = np.zeros((k, t, layout.n_inputs, u1), np.float32)
    rest = []
    for fan_in, fan_out in itertools.pairwise(widths[1:]):
        rest.append(np.zeros((k, t, fan_in, fan_out), np.float32))
        rest.append(np.zeros((k, t, 1, fan_out), np.float32))
    for i in range(k):
        for j in range(t):
            weights = members[i][j]
            if len(weights) != 2 * (len(widths) - 1):
                raise ValueError(
                    f"initial weights need {2 * (len(widths) - 1)} arrays, got {len(weights)}"
                )
            kernel = np.concatenate([weights[0], weights[1][None, :]], axis=0)
            if layout.shared:
                first[i, :, j * u1 : (j + 1) * u1] = kernel
            else:
                first[i, j] = kernel
            for n in range(1, len(widths) - 1):
                rest[2 * n - 2][i, j] = weights[2 * n]
                rest[2 * n - 1][i, j, 0] = weights[2 * n + 1]
    return [first, *rest]


def _take_trials(
    layout: _Layout, arrays: Sequence[np.ndarray], keep: Sequence[int]
) -> list[np.ndarray]:
    """Parameter-shaped arrays restricted to the trial columns ``keep``."""
    out = []
    for i, a in enumerate(arrays):
        if i == 0 and layout.shared:
            k, f, _ = a.shape
            u1 = layout.hidden[0]
            a = a.reshape(k, f, layout.trials, u1)[:, :, keep].reshape(k, f, len(keep) * u1)
        else:
            a = a[:, keep]
        out.append(np.ascontiguousarray(a))
    return out


def _keras_weights(layout: _Layout, params: Sequence[np.ndarray], column: int) -> list[np.ndarray]:
    """The first fold's weights of trial ``column`` as Keras' ``[W1, b1, ..., Wout, bout]``."""
    u1 = layout.hidden[0]
    if layout.shared:
        first = params[0][0, :, column * u1 : (column + 1) * u1]
    else:
        first = params[0][0, column]
    weights = [first[:-1].copy(), first[-1].copy()]
    for n in range(1, len(params), 2):
        weights += [params[n][0, column].copy(), params[n + 1][0, column, 0].copy()]
    return weights


@dataclass(frozen=True)
class _Probed:
    """What a probe of the held-out rows returned: classes ``[K, T, Nv]`` (padded), and the
    probabilities ``[K, T, Nv, C]`` when the engine keeps them."""

    classes: np.ndarray
    probabilities: np.ndarray | None


def _by_row(chunks: np.ndarray, layout: _Layout) -> np.ndarray:
    """A probe's ``[chunks, K, T, rows, ...]`` as ``[K, T, chunks * rows, ...]``."""
    k, t = layout.folds, layout.trials
    rows = layout.probe_chunks * layout.probe_rows
    return np.moveaxis(chunks, 0, 2).reshape(k, t, rows, *chunks.shape[4:])


def _tensor(array: np.ndarray) -> Any:
    """``array`` as a TensorFlow tensor over the same memory (DLPack: nothing copied) where
    TensorFlow can use it in place (64-byte aligned, C-contiguous, writable); else over an
    aligned copy. The tensor keeps the array alive; TensorFlow only reads it."""
    if not (is_aligned(array) and array.flags.writeable):
        copy = aligned_empty(array.shape, array.dtype)
        copy[...] = array
        array = copy
    return tf.experimental.dlpack.from_dlpack(array.__dlpack__())


class _TableTensors:
    """The rows the folds of one ``evaluate`` call read, as the graph's inputs: ``x`` (the
    table's float32 matrix, in place) and ``y`` (labels one-hot). Made once per table and kept
    while the table lives, so consecutive batches on the same folds set up nothing here.
    """

    def __init__(self, x: np.ndarray, labels: np.ndarray, n_classes: int):
        self.n_classes = n_classes
        x = np.asarray(x, dtype=np.float32)  # a table's is already: then nothing is copied
        self.gaps = bool(np.isnan(x).any())
        self.x = _tensor(x)
        y = aligned_empty((len(labels), n_classes))
        y[...] = 0.0
        y[np.arange(len(labels)), labels] = 1.0
        self.y = _tensor(y)

    @classmethod
    def of(cls, folds: Sequence[Fold], n_classes: int) -> tuple[_TableTensors, list[int]]:
        """The tensors of the folds' table, and where each fold's table starts in them: 0, as
        the folds of a :class:`~hpo.data.FoldSet` share one table; folds that bring several
        (made one by one) are stacked into one copy for this call."""
        tables = list({id(f.table): f.table for f in folds}.values())
        if len(tables) == 1:
            (table,) = tables
            made = _table_cache.get(table)
            if made is None or made.n_classes != n_classes:
                made = cls(table.x, table.labels, n_classes)
                _table_cache[table] = made
            return made, [0] * len(folds)
        ends = np.cumsum([t.n_rows for t in tables])
        starts = {id(t): int(end) - t.n_rows for t, end in zip(tables, ends, strict=True)}
        x = aligned_empty((int(ends[-1]), tables[0].n_features))
        np.concatenate([t.x for t in tables], out=x)
        labels = np.concatenate([t.labels for t in tables])
        return cls(x, labels, n_classes), [starts[id(f.table)] for f in folds]


@dataclass
class _Outcome:
    """A finished member: its per-fold predictions and how it ended."""

    predictions: list[np.ndarray]
    probabilities: list[np.ndarray]
    epochs: int
    pruned: bool
    weights: list[np.ndarray]  # the first fold's, in Keras ``get_weights()`` order


class StackedEngine:
    """K folds x T trials as one stacked model; see the module docstring.

    ``shared_order``: the T trials of a fold share its batch order and initial weights (drawn
    from the batch's first seed; common random numbers), so the first layer is one wide matmul.
    Otherwise every member draws weights and order from its own ``fold_seed(seed, fold)``.
    ``shuffle=False`` keeps rows in order (with ``initial_weights``, the equivalence tests).
    ``chunk_epochs``: epochs per graph call; divergence is checked between calls.
    ``compact_below``: after pruning, rebuild a smaller graph once the live trials are at most
    this fraction of the graph's (a rebuild costs a second or two of tracing).
    ``threads``: TF intra- and inter-op threads, set if this engine is the first to start TF in
    the process; 0 means one, the fastest measured for this small network, so use the other
    cores with more worker processes. ``trials_per_batch``: how many trials a worker should
    hand to one ``evaluate`` call.
    """

    name = "stacked"

    def __init__(
        self,
        *,
        checkpoint_every: int = 0,
        shuffle: bool = True,
        shared_order: bool = True,
        threads: int = 0,
        chunk_epochs: int = 25,
        compact_below: float = 0.75,
        keep_probabilities: bool = False,
        trials_per_batch: int = 8,
    ) -> None:
        if checkpoint_every < 0:
            raise ValueError(f"`checkpoint_every >= 0` must hold, but got {checkpoint_every}")
        if chunk_epochs < 1:
            raise ValueError(f"`chunk_epochs >= 1` must hold, but got {chunk_epochs}")
        self.checkpoint_every = checkpoint_every
        self.shuffle = shuffle
        self.shared_order = shared_order
        self.threads = threads
        self.chunk_epochs = chunk_epochs
        self.compact_below = compact_below
        self.keep_probabilities = keep_probabilities
        self.trials_per_batch = trials_per_batch

    @property
    def batch_seeded(self) -> bool:
        """With a shared order, a batch trains from its first seed (see the class docstring)."""
        return self.shared_order

    def evaluate(
        self,
        plans: Sequence[RegularizationPlan],
        folds: Sequence[Fold],
        *,
        model: ModelSpec,
        n_classes: int,
        seeds: Sequence[int],
        monitor: Monitor | None = None,
        initial_weights: InitialWeights | None = None,
        weight_seeds: Sequence[int] | None = None,
    ) -> list[EvaluationResult]:
        """Train every plan on every fold together; one result per plan, in order.

        ``initial_weights[plan][fold]`` (Keras ``get_weights()`` order) replaces the Glorot draw.
        ``weight_seeds[plan]`` (shared order only): a plan whose weight seed is not the batch's
        first seed draws its initial weights from ``fold_seed(weight seed, fold)`` and keeps the
        shared batch order; that is how one batch trains a plan under several seeds.
        """
        if weight_seeds is not None and len(weight_seeds) != len(plans):
            raise ValueError(f"got {len(plans)} plans but {len(weight_seeds)} weight seeds")
        if len(plans) != len(seeds):
            raise ValueError(f"got {len(plans)} plans but {len(seeds)} seeds")
        if not plans:
            return []
        if not folds:
            raise ValueError("no folds to train on")
        if model.builder is not None:
            raise ValueError("the stacked engine trains the built-in network only, not a builder's")
        for plan in plans:
            if len(plan.layers) != len(model.hidden):
                raise ValueError(
                    f"the plan has {len(plan.layers)} layers but the model has "
                    f"{len(model.hidden)} hidden layers"
                )
        import_keras(self.threads or 1)
        run = _Run(
            self,
            plans,
            folds,
            model,
            n_classes,
            seeds,
            monitor or NullMonitor(),
            initial_weights,
            weight_seeds,
        )
        return run.execute()

    def close(self) -> None:
        """Drop the compiled graphs and their variables; the next call rebuilds what it needs."""
        clear_graph_cache()


class _Run:
    """One ``evaluate`` call: the live graph, the RNG streams and the members' outcomes."""

    def __init__(
        self,
        engine: StackedEngine,
        plans: Sequence[RegularizationPlan],
        folds: Sequence[Fold],
        model: ModelSpec,
        n_classes: int,
        seeds: Sequence[int],
        monitor: Monitor,
        initial_weights: InitialWeights | None,
        weight_seeds: Sequence[int] | None = None,
    ) -> None:
        self.engine = engine
        self.plans = list(plans)
        self.folds = list(folds)
        self.model = model
        self.n_classes = n_classes
        self.seeds = [int(s) for s in seeds]
        self.monitor = monitor
        self.initial_weights = initial_weights
        self.started = time.perf_counter()
        k = len(folds)
        self.live: list[int] = list(range(len(plans)))  # plan index of each graph column
        self.outcomes: dict[int, _Outcome] = {}
        self.diverged = np.zeros((k, len(plans)), dtype=bool)  # [fold, plan]
        self.diverged_at: dict[int, int] = {}
        self.epoch = 0
        self.epoch_seconds: float | None = None  # measured by the latest graph call
        self._params: tuple[tuple[int, int], list[np.ndarray]] | None = None  # read at an epoch
        shared = engine.shared_order
        n_features = folds[0].n_features
        widths = (n_features, *model.hidden, n_classes)
        # One stream per fold (shared order) or per member: initial weights first, then one
        # permutation per epoch, so results do not depend on how epochs are chunked.
        if shared:
            self.streams: list[list[np.random.Generator]] = [
                [np.random.default_rng(fold_seed(self.seeds[0], fold.index))] for fold in folds
            ]
        else:
            self.streams = [
                [np.random.default_rng(fold_seed(seed, fold.index)) for seed in self.seeds]
                for fold in folds
            ]
        drawn = [[_glorot(rng, widths) for rng in row] for row in self.streams]
        if initial_weights is not None:
            members = [[list(initial_weights[j][i]) for j in range(len(plans))] for i in range(k)]
        elif shared:
            members = [[drawn[i][0]] * len(plans) for i in range(k)]
            for j, weight_seed in enumerate(weight_seeds or ()):
                if weight_seed != self.seeds[0]:  # the batch's own draw comes from its stream
                    for i, fold in enumerate(folds):
                        rng = np.random.default_rng(fold_seed(int(weight_seed), fold.index))
                        members[i][j] = _glorot(rng, widths)
        else:
            members = drawn
        # The rows every fold reads, as TensorFlow tensors (made once per table), and each
        # fold's training and held-out rows as rows of it.
        self.table, offsets = _TableTensors.of(self.folds, n_classes)
        self.train_rows = [
            offset + fold.train_rows.astype(np.int32)
            for fold, offset in zip(self.folds, offsets, strict=True)
        ]
        self.valid_rows = [
            offset + fold.valid_rows.astype(np.int32)
            for fold, offset in zip(self.folds, offsets, strict=True)
        ]
        self.layout = self._layout(self.plans)
        self.graph = _graph_for(self.layout)
        self.graph.load(self.folds, self.valid_rows, self.plans, _stack(self.layout, members))

    def _layout(self, plans: Sequence[RegularizationPlan]) -> _Layout:
        model = self.model
        return _Layout(
            fold_sizes=tuple(len(f.train_rows) for f in self.folds),
            valid_sizes=tuple(len(f.valid_rows) for f in self.folds),
            trials=len(plans),
            n_inputs=self.folds[0].n_features + 1,
            hidden=tuple(model.hidden),
            n_classes=self.n_classes,
            batch_size=model.batch_size,
            shared=self.engine.shared_order,
            activation=model.activation,
            optimizer=model.optimizer,
            learning_rate=float(model.learning_rate),
            gaps=self.table.gaps,
        )

    # --- training -----------------------------------------------------------------------------

    def execute(self) -> list[EvaluationResult]:
        engine = self.engine
        total = self.model.epochs
        every = engine.checkpoint_every
        probe = _Probed(np.zeros(0, np.int32), None)
        while self.epoch < total and self.live:
            target = min(total, self.epoch + engine.chunk_epochs)
            if every:
                target = min(target, (self.epoch // every + 1) * every)
            lay = self.layout
            per_epoch = lay.folds * lay.steps * lay.batch_size * (1 if lay.shared else lay.trials)
            calls = max(1, _ORDER_BYTES // (4 * per_epoch))
            while self.epoch < target:
                stops.check()
                epochs = min(target - self.epoch, calls, self._epochs_per_call())
                started = time.perf_counter()
                self.graph.train(self._permutations(epochs), self.table.x, self.table.y)
                self.epoch_seconds = (time.perf_counter() - started) / epochs
                self.epoch += epochs
            probe = self._probe()
            if self.epoch >= total:
                break
            if every and self.epoch % every == 0:
                self._checkpoint(probe)
            self._finish_fully_diverged(probe)
            self._maybe_compact()
        for column, plan in enumerate(self.live):
            if plan not in self.outcomes:
                self._finish(plan, column, probe, pruned=False)
        return self._results()

    def _epochs_per_call(self) -> int:
        """Epochs the next graph call may train within :data:`_CALL_SECONDS`: one until a call
        of this graph has been timed (its first call traces it too)."""
        if self.epoch_seconds is None:
            return 1
        return max(1, int(_CALL_SECONDS / max(self.epoch_seconds, 1e-6)))

    def _permutations(self, epochs: int) -> Any:
        lay = self.layout
        slots = lay.steps * lay.batch_size
        shape = (epochs, lay.folds, slots) if lay.shared else (epochs, lay.folds, lay.trials, slots)
        perm = np.zeros(shape, np.int32)
        for i, rows in enumerate(self.train_rows):
            n = len(rows)
            streams = self.streams[i] if lay.shared else [self.streams[i][p] for p in self.live]
            for j, rng in enumerate(streams):
                for e in range(epochs):
                    # The fold's n training rows in this epoch's order, as table rows.
                    order = rows[rng.permutation(n)] if self.engine.shuffle else rows
                    if lay.shared:
                        perm[e, i, :n] = order
                    else:
                        perm[e, i, j, :n] = order
        return tf.constant(perm)

    def _probe(self) -> _Probed:
        """Predicted classes of the held-out rows (probabilities too when the engine keeps
        them); records members that went non-finite."""
        lay = self.layout
        if self.engine.keep_probabilities:
            out, finite = self.graph.probe_probabilities(self.table.x)
            probabilities = _by_row(out.numpy(), lay)
            probe = _Probed(probabilities.argmax(axis=-1).astype(np.int32), probabilities)
        else:
            out, finite = self.graph.probe(self.table.x)
            probe = _Probed(_by_row(out.numpy(), lay), None)
        finite = finite.numpy()
        for column, plan in enumerate(self.live):
            if plan in self.outcomes:
                continue
            newly = ~finite[:, column] & ~self.diverged[:, plan]
            if newly.any():
                self.diverged[:, plan] |= newly
                self.diverged_at.setdefault(plan, self.epoch)
                _log.debug(
                    "trial %d diverged in folds %s by epoch %d",
                    plan,
                    np.flatnonzero(newly),
                    self.epoch,
                )
        return probe

    def _fold_predictions(
        self, plan: int, column: int, probe: _Probed
    ) -> tuple[list[np.ndarray], list[np.ndarray]]:
        predictions, kept = [], []
        for i, rows in enumerate(self.valid_rows):
            n = len(rows)
            if probe.probabilities is not None:
                kept.append(probe.probabilities[i, column, :n])
            if self.diverged[i, plan]:
                predictions.append(np.full(n, -1, dtype=np.int32))
            else:
                predictions.append(probe.classes[i, column, :n].copy())
        return predictions, kept

    def _checkpoint(self, probe: _Probed) -> None:
        accuracies: dict[int, float] = {}
        for column, plan in enumerate(self.live):
            if plan in self.outcomes:
                continue
            predictions, _ = self._fold_predictions(plan, column, probe)
            accuracies[plan] = oof_accuracy(self.folds, predictions)[0]
        pruned = self.monitor.on_checkpoint(self.epoch, accuracies)
        for column, plan in enumerate(self.live):
            if plan in pruned and plan not in self.outcomes:
                self._finish(plan, column, probe, pruned=True)

    def _finish_fully_diverged(self, probe: _Probed) -> None:
        for column, plan in enumerate(self.live):
            if plan not in self.outcomes and self.diverged[:, plan].all():
                self._finish(plan, column, probe, pruned=False)

    def _finish(self, plan: int, column: int, probe: _Probed, *, pruned: bool) -> None:
        predictions, kept = self._fold_predictions(plan, column, probe)
        if self._params is None or self._params[0] != (self.epoch, id(self.graph)):
            self._params = (
                (self.epoch, id(self.graph)),
                self.graph.unflatten(self.graph.flat.numpy()),
            )
        weights = _keras_weights(self.layout, self._params[1], column)
        self.outcomes[plan] = _Outcome(predictions, kept, self.epoch, pruned, weights)

    def _maybe_compact(self) -> None:
        """Drop finished trials from the graph once few enough remain to pay for a rebuild."""
        keep = [column for column, plan in enumerate(self.live) if plan not in self.outcomes]
        if len(keep) == len(self.live):
            return
        if keep and len(keep) > self.engine.compact_below * len(self.live):
            return
        old = self.graph
        self.live = [self.live[column] for column in keep]
        if not self.live:
            return
        params = _take_trials(old.layout, old.unflatten(old.flat.numpy()), keep)
        slots = [_take_trials(old.layout, old.unflatten(slot.numpy()), keep) for slot in old.slots]
        step_count = old.step_count.numpy()
        self.layout = self._layout([self.plans[p] for p in self.live])
        self.epoch_seconds = None  # a new graph: traced by its first call, timed again
        self.graph = _graph_for(self.layout)
        self.graph.load(
            self.folds,
            self.valid_rows,
            [self.plans[p] for p in self.live],
            params,
            slots,
            step_count,
        )
        _log.debug("compacted to %d trials at epoch %d", len(self.live), self.epoch)

    # --- results ------------------------------------------------------------------------------

    def _results(self) -> list[EvaluationResult]:
        seconds = (time.perf_counter() - self.started) / len(self.plans)
        results = []
        for plan in range(len(self.plans)):
            outcome = self.outcomes[plan]
            accuracy, per_fold, predictions = oof_accuracy(self.folds, outcome.predictions)
            diverged_folds = [f.index for i, f in enumerate(self.folds) if self.diverged[i, plan]]
            if not outcome.pruned:
                for fold, accuracy_k in zip(self.folds, per_fold, strict=True):
                    self.monitor.on_fold_end(plan, fold.index, accuracy_k)
            results.append(
                EvaluationResult(
                    accuracy=accuracy,
                    fold_accuracies=per_fold,
                    predictions=predictions,
                    epochs=outcome.epochs,
                    seconds=seconds,
                    diverged=bool(diverged_folds),
                    pruned=outcome.pruned,
                    diverged_folds=tuple(diverged_folds),
                    diverged_by_epoch=self.diverged_at.get(plan) if diverged_folds else None,
                    seed=self.seeds[0] if self.engine.shared_order else None,
                    shared_order=self.engine.shared_order,
                    trials_in_batch=len(self.plans),
                    xla_kernels=_xla_works(),
                    weights=outcome.weights,
                    probabilities=outcome.probabilities if self.engine.keep_probabilities else None,
                )
            )
        return results
