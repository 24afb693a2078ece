"""Objectives on hand-checkable cases: each loss against its formula evaluated by hand with the same
noise, the target identities in eps space, and where gradients flow."""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cgdiff import objectives, schedules, score_targets, targets

SCHEDULE = schedules.cosine()
B, SHAPE = 16, (4, 4, 2)


def posterior(seed=0):
  rng = np.random.default_rng(seed)
  return (jnp.asarray(rng.normal(size=(B,) + SHAPE), jnp.float32),
          jnp.asarray(rng.uniform(-3, 0, size=(B,) + SHAPE), jnp.float32))


def keys(seed=1):
  return jax.random.split(jax.random.PRNGKey(seed), B)


def by_hand(mean, logvar, ks):
  """The noise each objective draws, re-drawn here: t, z0, z_t, alpha, sigma, eps."""
  t, eps_vae, eps = objectives.draw_diffusion_noise(ks, SCHEDULE, SHAPE)
  alpha = SCHEDULE.alpha(t)[:, None, None, None]
  sigma = SCHEDULE.sigma(t)[:, None, None, None]
  z0 = mean + jnp.exp(0.5 * logvar) * eps_vae
  return t, z0, alpha * z0 + sigma * eps, alpha, sigma, eps


def zero_net(params, z, t):
  del params, t
  return jnp.zeros_like(z)


def test_noise_draws_are_per_example_and_in_range():
  t, eps_vae, eps = objectives.draw_diffusion_noise(keys(), SCHEDULE, SHAPE)
  assert t.shape == (B,) and eps.shape == (B,) + SHAPE and eps_vae.shape == (B,) + SHAPE
  assert np.all((t >= SCHEDULE.t_min) & (t <= SCHEDULE.t_max))
  # Example i's draw depends on its own key only: the first half of a batch is the same alone.
  t_half, _, eps_half = objectives.draw_diffusion_noise(keys()[: B // 2], SCHEDULE, SHAPE)
  np.testing.assert_array_equal(t_half, t[: B // 2])
  np.testing.assert_array_equal(eps_half, eps[: B // 2])


@pytest.mark.parametrize("target", ["tweedie", "lsi", "critic_gate"])
def test_diffusion_loss_with_a_zero_network_is_the_target_second_moment(target):
  mean, logvar = posterior()
  gate_fn = lambda p, z, t: jnp.full((z.shape[0], 1, 1, 1), 0.25)
  loss, metrics = objectives.diffusion_loss({"score": None, "gate": None}, (mean, logvar), keys(),
                                            eps_fn=zero_net, schedule=SCHEDULE, target=target,
                                            gate_fn=gate_fn)
  t, z0, z_t, alpha, sigma, eps = by_hand(mean, logvar, keys())
  lsi = (z_t - alpha * mean) * sigma / (alpha**2 * jnp.exp(logvar) + sigma**2)  # eps_LSI, 002 Alg. 1
  csem = sigma * (z0 - mean) / (alpha * jnp.exp(logvar))  # -sigma a
  expected = {"tweedie": eps, "lsi": lsi, "critic_gate": 0.75 * csem + 0.25 * eps}[target]
  np.testing.assert_allclose(loss, jnp.mean(expected**2), rtol=1e-4)
  np.testing.assert_allclose(metrics["target_excess_over_lsi"], jnp.mean((expected - lsi) ** 2),
                             rtol=1e-4, atol=1e-6)
  if target == "lsi":
    assert metrics["target_excess_over_lsi"] == 0.0
  else:
    assert metrics["target_excess_over_lsi"] > 0.0


def test_critic_gate_with_the_oracle_gate_is_the_lsi_target():
  mean, logvar = posterior()
  _, z0, z_t, alpha, sigma, eps = by_hand(mean, logvar, keys())
  gate = targets.oracle_gate(logvar, alpha, sigma)
  kwargs = dict(z0=z0, z_t=z_t, eps=eps, mean=mean, logvar=logvar, alpha=alpha, sigma=sigma)
  blended = objectives.noise_target("critic_gate", gate=gate, **kwargs)
  lsi = objectives.noise_target("lsi", **kwargs)
  # Identity 3 is algebraic; float32 cancellation in CSEM at small alpha^2 v sets the tolerance.
  np.testing.assert_allclose(blended, lsi, rtol=1e-3, atol=1e-4)
  np.testing.assert_allclose(objectives.noise_target("critic_gate", gate=1.0, **kwargs), eps)


def test_prior_critic_gate_uses_the_latent_statistics():
  mean, logvar = posterior()
  _, z0, z_t, alpha, sigma, eps = by_hand(mean, logvar, keys())
  prior = (jnp.zeros(SHAPE), jnp.zeros(SHAPE))  # N(0, I): prior CSEM = -z0 / alpha
  got = objectives.noise_target("critic_gate_prior", gate=0.0, z0=z0, z_t=z_t, eps=eps, mean=mean,
                                logvar=logvar, alpha=alpha, sigma=sigma, prior=prior)
  np.testing.assert_allclose(got, sigma * z0 / alpha, rtol=1e-5)
  with pytest.raises(ValueError, match="latent statistics"):
    objectives.noise_target("critic_gate_prior", gate=0.0, z0=z0, z_t=z_t, eps=eps, mean=mean,
                            logvar=logvar, alpha=alpha, sigma=sigma)


def test_unknown_target_and_missing_gate_are_clear_errors():
  mean, logvar = posterior()
  with pytest.raises(ValueError, match="unknown score target"):
    objectives.diffusion_loss({"score": None}, (mean, logvar), keys(), eps_fn=zero_net,
                              schedule=SCHEDULE, target="dsm")
  with pytest.raises(ValueError, match="gate"):
    objectives.diffusion_loss({"score": None}, (mean, logvar), keys(), eps_fn=zero_net,
                              schedule=SCHEDULE, target="critic_gate")


def test_gate_gets_gradient_from_the_critic_gate_loss():
  mean, logvar = posterior()
  gate_fn = lambda p, z, t: jax.nn.sigmoid(p["logit"] + 0.0 * z[:, :1, :1, :1])
  eps_fn = lambda p, z, t: p["scale"] * z
  params = {"score": {"scale": jnp.array(0.5)}, "gate": {"logit": jnp.array(1.0)}}
  grads = jax.grad(lambda p: objectives.diffusion_loss(p, (mean, logvar), keys(), eps_fn=eps_fn,
                                                        schedule=SCHEDULE, target="critic_gate",
                                                        gate_fn=gate_fn)[0])(params)
  assert abs(grads["gate"]["logit"]) > 0 and abs(grads["score"]["scale"]) > 0


def test_kl_terms_have_their_closed_forms():
  mean, logvar = posterior()
  v = np.exp(np.asarray(logvar, np.float64))
  m = np.asarray(mean, np.float64)
  np.testing.assert_allclose(objectives.gaussian_kl(mean, logvar, "regular"),
                             0.5 * np.mean(m**2 + v - 1 - np.log(v)), rtol=1e-5)
  np.testing.assert_allclose(objectives.gaussian_kl(mean, logvar, "modified"), 0.5 * np.mean(m**2 + v),
                             rtol=1e-5)
  assert objectives.gaussian_kl(jnp.zeros(3), jnp.zeros(3), "regular") == 0.0
  with pytest.raises(ValueError, match="KL"):
    objectives.gaussian_kl(mean, logvar, "reverse")


def identity_autoencoder():
  """encode(x) = (x, -20): z0 = x to within e^-10; decode(z) = scale * z."""
  encode_fn = lambda p, x: (x * p["enc"], jnp.full_like(x, -20.0))
  decode_fn = lambda p, z: p["dec"] * z
  return encode_fn, decode_fn, {"enc": jnp.array(1.0), "dec": jnp.array(1.0)}


def test_vae_loss_of_an_identity_autoencoder():
  encode_fn, decode_fn, params = identity_autoencoder()
  images, _ = posterior()
  loss, metrics = objectives.vae_loss(params, images, keys(), encode_fn=encode_fn, decode_fn=decode_fn,
                                      kl="regular", kl_weight=0.1)
  assert metrics["reconstruction"] < 1e-7  # (e^-10 eps)^2 ~ 2e-9
  kl = 0.5 * np.mean(np.asarray(images, np.float64) ** 2 + np.exp(-20.0) - 1 + 20.0)
  np.testing.assert_allclose(loss, metrics["reconstruction"] + 0.1 * kl, rtol=1e-5)


def cotrain(params, images, **kwargs):
  encode_fn, decode_fn, _ = identity_autoencoder()
  eps_fn = lambda p, z, t: p["scale"] * z
  base = dict(encode_fn=encode_fn, decode_fn=decode_fn, eps_fn=eps_fn, schedule=SCHEDULE,
              kl="modified", kl_weight=1e-3, score_target="lsi")
  return objectives.cotrain_loss(params, images, keys(), **{**base, **kwargs})


def test_cotrain_score_gradient_reaches_the_encoder_only_when_asked():
  _, _, vae_params = identity_autoencoder()
  params = {"vae": vae_params, "score": {"scale": jnp.array(0.3)}}
  images, _ = posterior()
  grad = lambda **kw: jax.grad(lambda p: cotrain(p, images, **kw)[0])(params)["vae"]["enc"]
  without_score = grad(score_weight=0.0)
  chex.assert_trees_all_close(grad(score_weight=1.0, encoder_score_gradient=False), without_score,
                              rtol=1e-6)
  assert abs(grad(score_weight=1.0) - without_score) > 1e-3 * abs(without_score)


def learned_variance_autoencoder():
  """encode(x) = (x, logvar) with one learned log-variance for every element; decode(z) = z."""
  encode_fn = lambda p, x: (x, jnp.full_like(x, p["logvar"]))
  decode_fn = lambda p, z: z
  return encode_fn, decode_fn, {"logvar": jnp.array(-1.0)}


def test_lsi_cotrain_gradient_reaches_the_encoder_logvar_through_the_target():
  """With LSI the score loss depends on the encoder's log-variance twice: through z0 = mu + sqrt(v) eps_vae
  and through the target's (alpha^2 v + sigma^2)^-1 (002 eq. 22). jax.grad must see both: it is checked
  against a central difference of the whole loss in float64 (step h = 1e-4: truncation error ~ h^2 ~ 1e-8
  relative, round-off ~ 1e-16 / h; rtol 1e-6 leaves room for both). The Tweedie target on the same
  encoder, whose loss sees v through z0 only, has a clearly different derivative: the target's own path
  carries a real share, so a stop_gradient on it would fail the first check."""
  encode_fn, decode_fn, vae_params = learned_variance_autoencoder()
  images, _ = posterior()
  with jax.enable_x64(True):
    images = jnp.asarray(images, jnp.float64)

    def loss(logvar, target="lsi"):
      return objectives.cotrain_loss(
          {"vae": {"logvar": logvar}, "score": {"scale": jnp.array(0.3, jnp.float64)}}, images, keys(),
          encode_fn=encode_fn, decode_fn=decode_fn, eps_fn=lambda p, z, t: p["scale"] * z,
          schedule=SCHEDULE, kl="modified", kl_weight=0.0, score_target=target)[0]

    logvar, h = jnp.asarray(vae_params["logvar"], jnp.float64), 1e-4
    numeric = (loss(logvar + h) - loss(logvar - h)) / (2 * h)
    np.testing.assert_allclose(jax.grad(loss)(logvar), numeric, rtol=1e-6)
    numeric_tweedie = (loss(logvar + h, "tweedie") - loss(logvar - h, "tweedie")) / (2 * h)
    assert abs(numeric - numeric_tweedie) > 1e-2 * abs(numeric)


def test_stiffness_reaches_the_encoder_without_the_score_gradient():
  """encoder_score_gradient=False keeps the score loss away from the encoder, not the stiffness penalty
  (a regulariser of the encoder's variance, 002 eq. 21): its gradient with respect to a shared logvar
  is d/dlogvar mean 1/(alpha^2 e^logvar + sigma^2) = -mean alpha^2 v / (alpha^2 v + sigma^2)^2."""
  encode_fn, decode_fn, vae_params = learned_variance_autoencoder()
  images, _ = posterior()
  params = {"vae": vae_params, "score": {"scale": jnp.array(0.3)}}

  def grad(stiffness_weight):
    loss = lambda p: objectives.cotrain_loss(
        p, images, keys(), encode_fn=encode_fn, decode_fn=decode_fn, eps_fn=lambda p, z, t: p["scale"] * z,
        schedule=SCHEDULE, kl="modified", kl_weight=1e-3, score_target="lsi",
        stiffness_weight=stiffness_weight, encoder_score_gradient=False)[0]
    return jax.grad(loss)(params)["vae"]["logvar"]

  score_keys = jax.vmap(lambda k: jax.random.fold_in(k, 2))(keys())
  t, _, _ = objectives.draw_diffusion_noise(score_keys, SCHEDULE, SHAPE)
  a2, s2, v = SCHEDULE.alpha(t) ** 2, SCHEDULE.sigma(t) ** 2, np.exp(-1.0)
  expected = -np.mean(a2 * v / (a2 * v + s2) ** 2)
  np.testing.assert_allclose(grad(0.5) - grad(0.0), 0.5 * expected, rtol=1e-4)


def test_cotrain_loss_is_the_sum_of_its_terms_and_stiffness_has_its_formula():
  _, _, vae_params = identity_autoencoder()
  params = {"vae": vae_params, "score": {"scale": jnp.array(0.3)}}
  images, _ = posterior()
  loss, m = cotrain(params, images, score_weight=2.0, stiffness_weight=0.5)
  np.testing.assert_allclose(loss, m["reconstruction"] + 1e-3 * m["kl"] + 2.0 * m["score_loss"]
                             + 0.5 * m["stiffness"], rtol=1e-6)
  # logvar = -20: alpha^2 v is negligible, so the penalty is mean 1/sigma^2 over the drawn times.
  score_keys = jax.vmap(lambda k: jax.random.fold_in(k, 2))(keys())
  t, _, _ = objectives.draw_diffusion_noise(score_keys, SCHEDULE, SHAPE)
  np.testing.assert_allclose(m["stiffness"], np.mean(1.0 / SCHEDULE.sigma(t) ** 2), rtol=1e-4)
  with pytest.raises(ValueError, match="co-training"):
    cotrain(params, images, score_target="critic_gate")


def test_objectives_jit():
  mean, logvar = posterior()
  loss_fn = functools.partial(objectives.diffusion_loss, eps_fn=zero_net, schedule=SCHEDULE, target="lsi")
  eager, _ = loss_fn({"score": None}, (mean, logvar), keys())
  jitted, _ = jax.jit(loss_fn)({"score": None}, (mean, logvar), keys())
  np.testing.assert_allclose(jitted, eager, rtol=1e-6)


def test_prior_csem_gate_has_a_degenerate_zero_loss_optimum():
  """MATH.md errata 4: with 001's prior CSEM, the gate g_p = sigma^2 / (sigma^2 + alpha^2 v_agg) (the
  oracle gate of the Gaussian fit) cancels z0, and the blend is the score of the diffused Gaussian fit,
  -(z_t - alpha mu_agg) / (alpha^2 v_agg + sigma^2), whatever the posteriors. A critic that outputs that
  (wrong) score has zero critic-gate loss. Float32 bound: each of the three terms of the residual
  (1 - g) eps_a + g eps - eps_hat carries a rounding error of a few ulps of its size M, so the loss is at
  most (4 * 2^-23)^2 mean(M^2) (each term's size counted). The same critic against the unbiased LSI
  target of the same (non-Gaussian) posteriors has a loss of order 1: the optimum is degenerate."""
  mean, logvar = posterior()
  prior_mean = jnp.asarray(np.random.default_rng(5).normal(size=SHAPE), jnp.float32)
  prior_logvar = jnp.asarray(np.random.default_rng(6).uniform(-1, 1, size=SHAPE), jnp.float32)

  def coefficients(t):
    return SCHEDULE.alpha(t)[:, None, None, None], SCHEDULE.sigma(t)[:, None, None, None]

  def gaussian_gate(params, z_t, t):
    alpha, sigma = coefficients(t)
    return targets.oracle_gate(jnp.broadcast_to(prior_logvar, z_t.shape), alpha, sigma)

  def gaussian_critic(params, z_t, t):  # eps-space form of the diffused Gaussian's score
    alpha, sigma = coefficients(t)
    score = targets.lsi_score(z_t, jnp.broadcast_to(prior_mean, z_t.shape),
                              jnp.broadcast_to(prior_logvar, z_t.shape), alpha, sigma)
    return targets.score_to_eps(score, sigma)

  params = {"score": None, "gate": None}
  loss, metrics = objectives.diffusion_loss(params, (mean, logvar), keys(), eps_fn=gaussian_critic,
                                            schedule=SCHEDULE, target="critic_gate_prior",
                                            gate_fn=gaussian_gate, prior=(prior_mean, prior_logvar))
  t, z0, z_t, alpha, sigma, eps = by_hand(mean, logvar, keys())
  g = gaussian_gate(None, z_t, t)
  eps_a = targets.score_to_eps(targets.prior_csem_score(z0, prior_mean, prior_logvar, alpha), sigma)
  size = jnp.abs((1 - g) * eps_a) + jnp.abs(g * eps) + jnp.abs(gaussian_critic(None, z_t, t))
  bound = (4 * 2.0**-23) ** 2 * float(jnp.mean(size**2))
  assert float(loss) <= bound, (float(loss), bound)
  assert float(metrics["target_second_moment"]) > 0.1  # the target itself is not trivially 0
  lsi_loss, _ = objectives.diffusion_loss(params, (mean, logvar), keys(), eps_fn=gaussian_critic,
                                          schedule=SCHEDULE, target="lsi")
  assert float(lsi_loss) > 0.05


def test_the_registry_says_what_each_target_needs():
  assert score_targets.names() == ("tweedie", "lsi", "critic_gate", "critic_gate_prior")
  assert score_targets.names(gate=True) == ("critic_gate", "critic_gate_prior")
  assert score_targets.names(prior=True) == ("critic_gate_prior",)
  assert objectives.COTRAIN_SCORE_TARGETS == ("tweedie", "lsi")


def test_diffusion_loss_fn_refuses_a_missing_or_an_unused_gate_or_prior():
  gate_fn = lambda p, z, t: jnp.full(z.shape[:1] + (1,) * (z.ndim - 1), 0.5)
  prior = (jnp.zeros(SHAPE), jnp.zeros(SHAPE))
  build = functools.partial(objectives.diffusion_loss_fn, eps_fn=zero_net, schedule=SCHEDULE)
  for target, kwargs in [("critic_gate", {}), ("critic_gate_prior", {"gate_fn": gate_fn}),
                         ("tweedie", {"gate_fn": gate_fn}), ("lsi", {"prior": prior})]:
    with pytest.raises(ValueError, match=target):
      build(target, **kwargs)
  with pytest.raises(ValueError, match="unknown score target 'dsm'"):
    build("dsm")
  mean, logvar = posterior()
  loss_fn = build("critic_gate_prior", gate_fn=gate_fn, prior=prior)
  direct = objectives.diffusion_loss({"score": None, "gate": None}, (mean, logvar), keys(), eps_fn=zero_net,
                                     schedule=SCHEDULE, target="critic_gate_prior", gate_fn=gate_fn, prior=prior)
  chex.assert_trees_all_equal(loss_fn({"score": None, "gate": None}, (mean, logvar), keys()), direct)
