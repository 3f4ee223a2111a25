"""What changes outside the update rules would buy, measured on the optimizer step alone.

    python benchmarks/step_alone_prototypes.py --size 1e6 --threads 1

Section 5 of ``optimizer_speed.py`` times ``optimizer.apply`` on fixed
gradients. In graph mode (no XLA) every TensorFlow op is one pass over its
tensors, so the cost of SNGM and LARS over SGD with momentum is their number of
passes. This script times, in one process with interleaved paired rounds, SNGM
and LARS as they are against prototypes built here by subclassing (the
package is not changed; the slot-keeping LARS kernel and LAMB's compiled
chain are now the package's own, so those rows time the package twice):

* **fused momentum kernel**: the momentum and weight update as one
  ``tf.raw_ops`` training kernel (``ResourceApplyMomentum`` for SNGM, whose
  slot keeps its meaning; ``ResourceApplyKerasMomentum`` for LARS, whose slot
  would then hold the *negated* velocity, as Keras's SGD does) instead of
  four element-wise ops and two assignments;
* for LAMB, **the per-variable chain compiled** (moments, direction, weight
  decay and both norms in one ``tf.function(jit_compile=True)``, as the VR
  optimizers compile their GSNR chain), against Keras's ``Lamb``;
* **no finiteness pass**: the skip policy's check (``reducer.all_finite`` and
  ``reducer.all_finite_by_squares``, one read of every gradient, whose sums of
  squares SNGM's and LARS's norms of the gradient now reuse) replaced by
  ``True``, the norms then computing their own sums: what the skip policy's
  read costs beyond the norms;
* **no norm guards**: the overflow-free norms' guard (``sqrt`` of the plain sum
  of squares when it is representable, else the scaled form, in a ``tf.cond``)
  replaced by the plain ``sqrt``: what the overflow and underflow safety of
  the norms costs;
* **LARS, floor**: the least any LARS step reads: the two sums of squares
  (``rules.sum_of_squares``, the form the package uses), the trust ratio and
  the momentum kernel, with neither the finiteness check nor the guards. Its
  ratio to SGD with momentum is the cost of the two norms' reads (about 1.4
  on paper: seven accesses of a parameter-sized tensor against five), and
  LARS's ratio to it the cost of everything else.

The prototypes give the same steps as the optimizers on finite gradients
(checked below before timing); the last three drop protections (against
non-finite gradients, against norms that overflow or underflow) and are not
something to use.
"""

import argparse
import statistics
import sys

import numpy as np

import optimizer_speed as bench  # configures the logical CPUs before TensorFlow starts

import tensorflow as tf  # noqa: E402

import machine_state  # noqa: E402
from machine_state import MachineState  # noqa: E402
from tf_largebatch.optimizers import keras_seam, reducer, rules  # noqa: E402


class FusedSNGM(bench.tlb.SNGM):
    """SNGM with ``u <- beta u + g_hat; w <- w - lr u`` as one ``ResourceApplyMomentum``."""

    def update_step(self, gradient, variable, learning_rate):
        dtype = variable.dtype
        momentum = self.momentums[keras_seam.variable_index(self, variable)]
        tf.raw_ops.ResourceApplyMomentum(
            var=variable.handle, accum=momentum.handle, lr=tf.cast(learning_rate, dtype),
            grad=tf.cast(gradient, dtype), momentum=tf.cast(self.momentum, dtype), use_nesterov=False)


def lars_direction_and_rate(optimizer, gradient, variable, learning_rate):
    """``(index, u, lr * ratio)`` of one LARS variable: the chassis's direction and layer-wise rate."""
    dtype = variable.dtype
    gradient = tf.cast(gradient, dtype)
    index = keras_seam.variable_index(optimizer, variable)
    weight_decay = optimizer.weight_decay if (optimizer.weight_decay and optimizer._decays[index]) else 0.0
    update = optimizer._update(gradient, variable, weight_decay)
    rate = tf.cast(learning_rate, dtype)
    if optimizer._adapts[index]:
        rate = rate * tf.cast(optimizer._layer_rate(variable, gradient, update, weight_decay), dtype)
    return index, update, rate


class FusedLARS(bench.tlb.LARS):
    """LARS (trust ratio on the gradient, no Nesterov) with the velocity update as one
    ``ResourceApplyKerasMomentum``: its slot holds ``-velocity``."""

    def update_step(self, gradient, variable, learning_rate):
        index, update, rate = lars_direction_and_rate(self, gradient, variable, learning_rate)
        dtype = variable.dtype
        tf.raw_ops.ResourceApplyKerasMomentum(
            var=variable.handle, accum=self.momentums[index].handle, lr=rate, grad=update,
            momentum=tf.cast(self.momentum, dtype), use_nesterov=False)


class FusedSameSlotLARS(bench.tlb.LARS):
    """LARS with ``v <- momentum v + s; w <- w - v`` as one ``ResourceApplyMomentum`` (learning rate 1,
    ``s = lr * ratio * u`` one pass before it): the slot keeps its meaning."""

    def update_step(self, gradient, variable, learning_rate):
        index, update, rate = lars_direction_and_rate(self, gradient, variable, learning_rate)
        rules.apply_heavy_ball(variable, self.momentums[index], update * rate, 1.0, self.momentum)


class CompiledChainLAMB(bench.tlb.LAMB):
    """LAMB whose per-variable element-wise chain (moments, direction, weight decay and the two
    norms) is one XLA-compiled function even in graph mode, as the VR optimizers do for their
    GSNR chain; the trust ratio and the weight update stay graph ops."""

    def _chain(self, weight_decay):
        chains = self.__dict__.setdefault("_chains", {})
        if weight_decay not in chains:
            tolerance = rules.adam_root_tolerance(self.epsilon, self.beta_2)

            def chain(gradient, weight, m, root, step):
                m = rules.moving_average(m, gradient, self.beta_1)
                root = rules.root_moving_average(root, gradient, self.beta_2, underflow_tolerance=tolerance)
                update = rules.bias_corrected_adam_direction(m, root, self.beta_1, self.beta_2, step, self.epsilon)
                if weight_decay:
                    update = rules.add_weight_decay(update, weight, weight_decay)
                return m, root, update, rules.l2_norm(weight), rules.l2_norm(update)

            chains[weight_decay] = tf.function(chain, jit_compile=True)
        return chains[weight_decay]

    def update_step(self, gradient, variable, learning_rate):
        dtype = variable.dtype
        index = keras_seam.variable_index(self, variable)
        weight_decay = self.weight_decay if (self.weight_decay and self._decays[index]) else 0.0
        m, root = self._momentums[index], self._velocity_roots[index]
        new_m, new_root, update, weight_norm, update_norm = self._chain(weight_decay)(
            tf.cast(gradient, dtype), tf.convert_to_tensor(variable), tf.convert_to_tensor(m),
            tf.convert_to_tensor(root), tf.cast(self.applied_updates + 1, dtype))
        self.assign(m, new_m)
        self.assign(root, new_root)
        rate = tf.cast(learning_rate, dtype)
        if self._adapts[index]:
            rate = rate * rules.trust_ratio(weight_norm, update_norm, trust_coefficient=self.trust_coefficient,
                                            bounds=self.trust_ratio_bounds, epsilon=self._trust_ratio_epsilon)
        self.assign_sub(variable, update * rate)


class FloorLARS(bench.tlb.LARS):
    """LARS reduced to two sums of squares, the trust ratio and the momentum kernel (no checks, no guards)."""

    def update_step(self, gradient, variable, learning_rate):
        index = keras_seam.variable_index(self, variable)
        gradient = tf.cast(gradient, variable.dtype)
        rate = tf.cast(learning_rate, variable.dtype)
        if self._adapts[index]:
            weight_norm = tf.sqrt(rules.sum_of_squares(variable))
            gradient_norm = tf.sqrt(rules.sum_of_squares(gradient))
            rate = rate * rules.trust_ratio(weight_norm, gradient_norm, trust_coefficient=self.trust_coefficient,
                                            bounds=self.trust_ratio_bounds, epsilon=self.epsilon)
        rules.apply_heavy_ball(variable, self.momentums[index], gradient * rate, 1.0, self.momentum)


def _factories():
    return {
        "SGD+momentum": (bench.OPTIMIZERS["SGD+momentum"], ()),
        "SNGM": (bench.OPTIMIZERS["SNGM"], ()),
        "SNGM, fused kernel": (lambda: FusedSNGM(0.01), ()),
        "SNGM, no finiteness pass": (bench.OPTIMIZERS["SNGM"], ("check",)),
        "SNGM, both": (lambda: FusedSNGM(0.01), ("check",)),
        "LARS": (bench.OPTIMIZERS["LARS"], ()),
        "LARS, fused kernel": (lambda: FusedLARS(1.0), ()),
        "LARS, fused kernel, slot kept": (lambda: FusedSameSlotLARS(1.0), ()),
        "LARS, no finiteness pass": (bench.OPTIMIZERS["LARS"], ("check",)),
        "LARS, both": (lambda: FusedLARS(1.0), ("check",)),
        "LARS, no norm guards": (bench.OPTIMIZERS["LARS"], ("guards",)),
        "LARS, floor": (lambda: FloorLARS(1.0), ("check",)),
        "keras Lamb": (bench.OPTIMIZERS["keras Lamb"], ()),
        "LAMB": (bench.OPTIMIZERS["LAMB"], ()),
        "LAMB, compiled chain": (lambda: CompiledChainLAMB(1e-3), ()),
        "LAMB (weight decay)": (bench.OPTIMIZERS["LAMB (weight decay)"], ()),
        "LAMB (weight decay), compiled chain": (lambda: CompiledChainLAMB(1e-3, weight_decay=0.01), ()),
    }


def _contender(label, factory, removed, hidden, jit_compile):
    """A timed step; ``removed`` names what is replaced while it traces: ``"check"``, ``"guards"``."""
    bench.OPTIMIZERS[label] = lambda **kw: factory()
    contender = bench.StepAlone(label, lambda: bench.mlp(hidden), jit_compile)
    original = reducer.all_finite, reducer.all_finite_by_squares, rules._norm_from_sum_of_squares
    if "check" in removed:
        reducer.all_finite = lambda values: tf.constant(True)
        reducer.all_finite_by_squares = lambda values: (tf.constant(True), [None] * len(values))
    if "guards" in removed:
        rules._norm_from_sum_of_squares = lambda plain, size, scaled_norm: tf.sqrt(plain)
    try:
        contender.run(3)  # traces now, with or without the parts
    finally:
        reducer.all_finite, reducer.all_finite_by_squares, rules._norm_from_sum_of_squares = original
    return contender


def _check_same_steps(hidden):
    """The prototypes take the optimizers' steps (to float32 rounding) on finite gradients."""
    for plain, prototype in (("SNGM", "SNGM, fused kernel"), ("LARS", "LARS, fused kernel"),
                             ("LARS", "LARS, fused kernel, slot kept"), ("LARS", "LARS, floor"),
                             ("LAMB (weight decay)", "LAMB (weight decay), compiled chain")):
        weights = []
        for label in (plain, prototype):
            factory, removed = _factories()[label]
            contender = _contender(label, factory, removed, hidden, False)
            weights.append([v.numpy() for v in contender.variables])
        for a, b in zip(*weights):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=float, default=1e6, help="parameters of the MLP (default: %(default).0e)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--jit", action="store_true", help="compile the steps with XLA")
    parser.add_argument("--threads", type=int, default=1, help="TensorFlow threads (default %(default)s)")
    machine_state.add_malloc_argument(parser)
    args = parser.parse_args(argv)
    bench.set_threads(args.threads)
    machine_state.configure_malloc(args.malloc)
    hidden = bench.mlp_hidden_for(args.size)
    with MachineState():
        print("command: python benchmarks/step_alone_prototypes.py " + " ".join(sys.argv[1:] if argv is None else argv))
        _check_same_steps(bench.mlp_hidden_for(1e4))
        contenders = [_contender(label, factory, removed, hidden, args.jit)
                      for label, (factory, removed) in _factories().items()]
        bench.interleaved(contenders, args.steps, args.rounds)
        by_label = {contender.label: contender for contender in contenders}
        count = sum(int(np.prod(v.shape)) for v in contenders[0].variables)
        print(f"MLP of {count:.2e} parameters, {'XLA' if args.jit else 'graph'}; CPU-time ratio of optimizer.apply "
              f"to the Keras counterpart (median of {args.rounds} paired rounds of {args.steps} applies):")
        for contender in contenders:
            base = by_label["keras Lamb" if contender.label.startswith("LAMB") else "SGD+momentum"]
            if contender is not base and contender.label != "keras Lamb":
                print(f"  {contender.label + ' / ' + base.label:<52}{bench.paired_ratio(contender, base, 'cpu'):.3f}")
        floor_ratio = bench.paired_ratio(by_label["LARS"], by_label["LARS, floor"], "cpu")
        print(f"  {'LARS / LARS, floor':<52}{floor_ratio:.3f}   (the checks and guards beyond the reads)")
        print(f"  (SGD+momentum {1000 * statistics.median(by_label['SGD+momentum'].cpu):.2f}, keras Lamb "
              f"{1000 * statistics.median(by_label['keras Lamb'].cpu):.2f} CPU ms per apply)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
