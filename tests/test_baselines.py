import torch

from litbrain.evaluation.baselines import fit_ridge


def _linear_data(n, d, k, noise, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d, k, generator=g)
    x = torch.randn(n, d, generator=g)
    return x, x @ w + 0.5 + noise * torch.randn(n, k, generator=g), w


def test_ridge_recovers_a_linear_map_and_picks_a_small_penalty_for_clean_data():
    x, y, w = _linear_data(400, 20, 5, 0.01, 0)
    xv, yv, _ = _linear_data(100, 20, 5, 0.01, 0)
    model = fit_ridge(x, y, [1e-4, 1e-2, 1.0, 100.0], xv, xv @ w + 0.5)
    assert model.alpha <= 1e-2
    torch.testing.assert_close(model.weight.float(), w, atol=5e-3, rtol=0)
    torch.testing.assert_close(model.predict(xv).float(), (xv @ w + 0.5), atol=0.05, rtol=0)


def test_primal_and_dual_forms_agree():
    x, y, _ = _linear_data(30, 50, 3, 0.1, 1)  # fewer samples than features: dual form
    dual = fit_ridge(x, y, [0.5])
    xt = x.double() - x.double().mean(0)
    yt = y.double() - y.double().mean(0)
    scale = torch.linalg.eigvalsh(xt @ xt.T).clamp_min(0).mean()
    primal = torch.linalg.solve(xt.T @ xt + 0.5 * scale * torch.eye(50, dtype=torch.float64), xt.T @ yt)
    torch.testing.assert_close(dual.weight, primal, atol=1e-8, rtol=1e-6)
