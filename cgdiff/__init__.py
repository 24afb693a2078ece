"""cgdiff: latent diffusion on stochastic VAE posteriors in JAX/Flax.

The functional core: `schedules` (alpha, sigma and everything derived from them), `targets` (the
Tweedie, CSEM and LSI score targets, the gate blend, exact Gaussian-field scores) and `samplers`
(Heun predictor-corrector, probability-flow ODE solvers, DDIM/DDPM). See MATH.md for the equations.
"""

from cgdiff import samplers, schedules, targets

__version__ = "0.1.0"
__all__ = ["samplers", "schedules", "targets"]
