"""The training-free baselines (lsh, pcah, itq, sh) against naive re-computations written from their
formulas in numpy float64 on the whole training matrix: PCA by the SVD of the centred data, ITQ's
updates by a direct loop, Spectral Hashing by a line-by-line transcription of trainSH / compressSH
(modes, frequencies, the product of sines). Then streaming, seeds, saved state, refusals, and a
two-cluster sanity check with the project's mAP."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from hybridhash.errors import CheckpointError, CheckpointMismatchError, ConfigError, DataError
from hybridhash.limits import MAX_COVARIANCE_FEATURES
from hybridhash.methods.shallow import SHALLOW, initial_rotation, load_shallow, make_shallow, spectral_modes
from hybridhash.methods.shallow.streams import FeatureStream, moments
from hybridhash.metrics import mean_average_precision

NAMES = sorted(SHALLOW)


# ---------------------------------------------------------------- data and naive references
def features(n, d, seed, offset=5.0):
    """(n, d) float64 with distinct variances (so every principal direction is unique) and a mean
    far from the origin."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    scales = np.linspace(3.0, 0.3, d)
    return rng.standard_normal((n, d)) * scales @ q.T + offset


TRAIN, QUERY = features(240, 24, 0), features(60, 24, 1)


def stream(x, batch):
    return lambda: (torch.as_tensor(x[i:i + batch]) for i in range(0, len(x), batch))


def fitted(name, x=TRAIN, bits=16, seed=0, batch=None, **options):
    return make_shallow(name, bits, seed=seed, **options).fit(stream(x, batch or len(x)), x.shape[1])


def pm1(positive):
    return np.where(positive, 1, -1).astype(np.int8)


def sign_rule(vectors):
    """Each column flipped so that its largest-magnitude entry is positive."""
    top = np.abs(vectors).argmax(0)
    return vectors * np.where(vectors[top, np.arange(vectors.shape[1])] < 0, -1.0, 1.0)


def pca_by_svd(x, k):
    """(mean, top-k right singular vectors of the centred data (d, k)), numpy's own signs."""
    mean = x.mean(0)
    _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
    return mean, vt[:k].T


def itq_loop(v, r, updates):
    """ITQ's rotation by the authors' loop: B = sgn(V R), svd(B' V) = U S W', R = W U'; errors per update."""
    errors = []
    for _ in range(updates):
        b = np.where(v @ r >= 0, 1.0, -1.0)
        errors.append(np.sum((b - v @ r) ** 2) / len(v))
        u, _, wt = np.linalg.svd(b.T @ v)
        r = wt.T @ u.T
    errors.append(np.sum((np.where(v @ r >= 0, 1.0, -1.0) - v @ r) ** 2) / len(v))
    return r, np.array(errors)


def sh_modes_transcribed(mn, mx, nbits):
    """trainSH's mode enumeration, line by line (MATLAB's 1-based rows shifted by one)."""
    npca = len(mn)
    R = mx - mn
    max_mode = np.ceil((nbits + 1) * R / R.max()).astype(int)
    n_modes = max_mode.sum() - len(max_mode) + 1
    modes = np.ones((n_modes, npca))
    m = 1
    for i in range(npca):
        modes[m:m + max_mode[i] - 1, i] = np.arange(2, max_mode[i] + 1)
        m += max_mode[i] - 1
    modes -= 1
    omegas = modes * (np.pi / R)
    eig_val = -np.sum(omegas ** 2, axis=1)
    ii = np.argsort(-eig_val, kind="stable")
    return modes[ii[1:nbits + 1]]


def sh_reference(train, sets, nbits):
    """trainSH then compressSH of each set: (modes, [codes])."""
    npca = min(nbits, train.shape[1])
    values, vectors = np.linalg.eigh(np.cov(train.T))
    pc = sign_rule(vectors[:, np.argsort(-values, kind="stable")[:npca]])
    v = train @ pc
    mn, mx = v.min(0) - 2.2e-16, v.max(0) + 2.2e-16
    modes = sh_modes_transcribed(mn, mx, nbits)
    omegas = modes * (np.pi / (mx - mn))
    codes = []
    for x in sets:
        u = x @ pc - mn
        y = np.stack([np.prod(np.sin(u * omegas[i] + np.pi / 2), axis=1) for i in range(nbits)], axis=1)
        codes.append(pm1(y > 0))
    return modes, codes


# ---------------------------------------------------------------- the streamed moments
@pytest.mark.parametrize("batch", [1, 7, 240])
def test_streamed_mean_and_covariance_keep_their_digits_far_from_the_origin(batch):
    x = features(240, 10, 2, offset=1e6)
    n, mean, scatter = moments(FeatureStream("t", stream(x, batch), 10, torch.device("cpu")))
    assert n == 240
    np.testing.assert_allclose(mean.numpy(), x.mean(0), rtol=1e-15, atol=0)
    cov = np.cov(x.T)
    # the sum-of-squares formula loses about 1e-4 of it here
    assert np.abs(scatter.numpy() / (n - 1) - cov).max() <= 1e-12 * np.abs(cov).max()


# ---------------------------------------------------------------- each baseline against numpy
@pytest.mark.parametrize("center", [True, False])
def test_lsh_is_the_sign_of_gaussian_projections_from_the_seed(center):
    lsh = fitted("lsh", bits=24, seed=5, center=center)
    w = lsh.state_tensors()["projection"].numpy()
    drawn = torch.randn(24, 24, generator=torch.Generator().manual_seed(5), dtype=torch.float64).numpy()
    np.testing.assert_array_equal(w, drawn)
    mean = TRAIN.mean(0) if center else np.zeros(24)
    for x in (TRAIN, QUERY):
        np.testing.assert_array_equal(lsh.encode(x).numpy(), pm1((x - mean) @ w >= 0))


def test_pcah_projection_is_the_svd_of_the_centred_data_up_to_each_columns_sign():
    pcah = fitted("pcah", bits=16)
    state = pcah.state_tensors()
    p = state["projection"].numpy()
    mean, ref = pca_by_svd(TRAIN, 16)
    signs = np.sign(np.sum(p * ref, axis=0))
    assert np.all(signs != 0)
    np.testing.assert_allclose(p, ref * signs, atol=1e-10)
    np.testing.assert_allclose(state["mean"].numpy(), mean, rtol=1e-14)
    np.testing.assert_array_equal(np.abs(p).argmax(0), np.argmax(p, 0))  # the sign rule
    _, s, _ = np.linalg.svd(TRAIN - mean, full_matrices=False)
    np.testing.assert_allclose(state["eigenvalues"].numpy(), s[:16] ** 2 / (len(TRAIN) - 1), rtol=1e-10)
    for x in (TRAIN, QUERY):
        np.testing.assert_array_equal(pcah.encode(x).numpy(), pm1((x - mean) @ (ref * signs) >= 0))


@pytest.mark.parametrize("iterations", [50, 0, 7])
def test_itq_rotation_and_codes_equal_a_direct_loop_from_the_same_start(iterations):
    bits, seed = 16, 3
    itq = fitted("itq", bits=bits, seed=seed, **({} if iterations == 50 else {"iterations": iterations}))
    state = itq.state_tensors()
    mean, p = pca_by_svd(TRAIN, bits)
    p = sign_rule(p)
    g = torch.randn(bits, bits, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).numpy()
    r0 = sign_rule(np.linalg.svd(g)[0])
    np.testing.assert_allclose(initial_rotation(bits, torch.Generator().manual_seed(seed)).numpy(), r0, atol=1e-12)
    v = (TRAIN - mean) @ p
    r, errors = itq_loop(v, r0, iterations + 1)  # T = 50 -> 51 updates
    assert state["quantization_error"].shape == (iterations + 2,)
    np.testing.assert_allclose(state["rotation"].numpy(), r, atol=1e-9)
    np.testing.assert_allclose(state["quantization_error"].numpy(), errors, rtol=1e-10)
    # the final rotation for every set, the training set included
    np.testing.assert_array_equal(itq.encode(TRAIN).numpy(), pm1(v @ r >= 0))
    np.testing.assert_array_equal(itq.encode(QUERY).numpy(), pm1((QUERY - mean) @ p @ r >= 0))
    assert itq.facts()["quantization_error"] == pytest.approx(list(errors), rel=1e-10)


def test_itq_quantisation_error_is_non_increasing_over_its_updates():
    for seed in range(3):
        errors = fitted("itq", bits=16, seed=seed).state_tensors()["quantization_error"].numpy()
        assert len(errors) == 52
        assert np.all(np.diff(errors) <= 1e-12 * errors[0]), np.diff(errors).max()
        assert errors[-1] < errors[0]


@pytest.mark.parametrize("bits,d", [(16, 24), (24, 24), (32, 6)])
def test_sh_codes_equal_a_transcription_of_train_and_compress(bits, d):
    train, query = TRAIN[:, :d], QUERY[:, :d]
    sh = fitted("sh", x=train, bits=bits)
    modes, (train_codes, query_codes) = sh_reference(train, (train, query), bits)
    np.testing.assert_array_equal(sh.state_tensors()["modes"].numpy(), modes.astype(np.int64))
    np.testing.assert_array_equal(sh.encode(train).numpy(), train_codes)
    np.testing.assert_array_equal(sh.encode(query).numpy(), query_codes)
    if bits > d:  # several frequencies along one direction
        assert sh.state_tensors()["modes"].shape == (bits, d)


def test_sh_modes_of_equal_ranges_keep_the_enumeration_order():
    mn = np.zeros(3)
    for mx in (np.array([2.0, 2.0, 1.0]), np.array([1.0, 3.0, 3.0]), np.array([0.7, 0.7, 0.7])):
        ours = spectral_modes(torch.tensor(mx - mn), 8).numpy()
        np.testing.assert_array_equal(ours, sh_modes_transcribed(mn, mx, 8))
        assert np.all((ours > 0).sum(1) == 1)


# ---------------------------------------------------------------- streaming, seeds, state
@pytest.mark.parametrize("name", NAMES)
def test_batches_of_seven_give_the_codes_of_one_batch(name):
    whole, sevens = fitted(name, seed=1), fitted(name, seed=1, batch=7)
    assert sevens.n_train == whole.n_train == len(TRAIN)
    for x in (TRAIN, QUERY):
        assert torch.equal(sevens.encode(x), whole.encode(x))


@pytest.mark.parametrize("name", NAMES)
def test_the_same_seed_gives_the_same_fit(name):
    a, b = fitted(name, seed=11), fitted(name, seed=11)
    sa, sb = a.state_tensors(), b.state_tensors()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert torch.equal(a.encode(QUERY), b.encode(QUERY))


def test_another_seed_gives_other_lsh_codes_and_another_itq_start():
    assert not torch.equal(fitted("lsh", seed=0).encode(QUERY), fitted("lsh", seed=1).encode(QUERY))
    r0, r1 = (initial_rotation(16, torch.Generator().manual_seed(s)) for s in (0, 1))
    assert not torch.allclose(r0, r1)


@pytest.mark.parametrize("name", NAMES)
def test_saved_state_and_config_give_the_same_codes(name, tmp_path):
    original = fitted(name, bits=24, seed=4)
    save_file(original.state_tensors(), tmp_path / "state.safetensors")
    config = json.loads(json.dumps(original.config()))
    restored = load_shallow(config, load_file(tmp_path / "state.safetensors"))
    assert restored.config() == original.config() and config["n_features"] == 24
    assert torch.equal(restored.encode(QUERY), original.encode(QUERY))
    codes = original.encode(QUERY)
    assert codes.dtype == torch.int8 and codes.shape == (len(QUERY), 24)


def test_progress_is_told_every_row_of_every_pass_and_every_update():
    seen = {}

    def progress(stage, done, total):
        seen.setdefault(stage, [0, total])[0] += done
        seen[stage][1] = total

    make_shallow("itq", 8).fit(stream(TRAIN, 7), 24, progress=progress)
    assert seen == {"itq: mean and covariance": [240, None], "itq: projections": [240, 240],
                    "itq: rotation": [51, 51]}
    seen.clear()
    make_shallow("sh", 8).fit(stream(TRAIN, 50), 24, progress=progress)
    assert seen == {"sh: mean and covariance": [240, None], "sh: ranges": [240, 240]}
    make_shallow("lsh", 8).fit(stream(TRAIN, 50), 24, progress=True)  # tqdm bars, closed at the end


# ---------------------------------------------------------------- refusals
def never():
    raise AssertionError("the features were read before the settings were checked")


def test_settings_that_cannot_work_are_refused_before_reading_features():
    for name in ("pcah", "itq"):
        with pytest.raises(ConfigError, match=f"{name}: 32 bits need at least 32 features, got 24"):
            make_shallow(name, 32).fit(never, 24)
    make_shallow("sh", 32).fit(stream(TRAIN, 240), 24)  # sh and lsh allow more bits than features
    d = MAX_COVARIANCE_FEATURES + 1
    for name in ("pcah", "itq", "sh"):
        with pytest.raises(ConfigError, match=rf"{name}: {d} features need about \d+ GiB .* backbone"):
            make_shallow(name, 8).fit(never, d)
    for bits in (12, 0, 264, 8.0, True):
        with pytest.raises(ConfigError, match="lsh: bits must be a multiple of 8 between 8 and 256"):
            make_shallow("lsh", bits)
    with pytest.raises(ConfigError, match="lsh: seed must be an integer from 0"):
        make_shallow("lsh", 8, seed=-1)
    with pytest.raises(ConfigError, match="unknown training-free baseline 'pca'; known: itq, lsh, pcah, sh"):
        make_shallow("pca", 8)
    with pytest.raises(ConfigError, match="unknown hyper-parameter 'centre' for lsh; valid: center"):
        make_shallow("lsh", 8, centre=False)
    with pytest.raises(ConfigError, match="itq: hyper-parameter iterations must be an integer from 0"):
        make_shallow("itq", 8, iterations=-1)
    with pytest.raises(ConfigError, match="n_features must be a positive integer"):
        make_shallow("lsh", 8).fit(never, 0)
    with pytest.raises(ConfigError, match="batches must be a callable"):
        make_shallow("lsh", 8).fit([TRAIN], 24)
    with pytest.raises(ConfigError, match="not fitted"):
        make_shallow("sh", 8).encode(QUERY)


@pytest.mark.parametrize("name", NAMES)
def test_bad_features_are_refused_naming_the_batch(name):
    bad = TRAIN.copy()
    bad[17, 5] = np.nan
    with pytest.raises(DataError, match=rf"{name}: features batch 2 holds a non-finite value at row 3, column 5"):
        make_shallow(name, 8).fit(stream(bad, 7), 24)
    with pytest.raises(DataError, match=rf"{name}: fitting needs at least 2 training rows, got 1"):
        make_shallow(name, 8).fit(stream(TRAIN[:1], 7), 24)
    with pytest.raises(DataError, match=r"features batch 0 has shape \(7, 23\), expected \(B, 24\)"):
        make_shallow(name, 8).fit(stream(TRAIN[:, :23], 7), 24)
    with pytest.raises(DataError, match="features batch 0 has dtype torch.bool"):
        make_shallow(name, 8).fit(lambda: iter([torch.ones(3, 24, dtype=torch.bool)]), 24)
    model = fitted(name, bits=8)
    with pytest.raises(DataError, match=rf"{name}: features to encode holds a non-finite value at row 17, column 5"):
        model.encode(bad)
    with pytest.raises(DataError, match=r"features to encode has shape \(60, 23\)"):
        model.encode(QUERY[:, :23])


def passes(*sets):
    """batches(): the first call streams sets[0], the second sets[1], and so on."""
    calls = []

    def batches():
        calls.append(1)
        return stream(sets[len(calls) - 1], 7)()

    return batches


@pytest.mark.parametrize("name", ["itq", "sh"])
def test_a_second_pass_that_disagrees_with_the_first_is_refused(name):
    with pytest.raises(DataError, match=f"{name}: a later pass .* gave 230 rows, the first 240: batches"):
        make_shallow(name, 8).fit(passes(TRAIN, TRAIN[:230]), 24)
    with pytest.raises(DataError, match="gave more than 240 rows, the first 240"):
        make_shallow(name, 8).fit(passes(TRAIN, np.vstack([TRAIN, TRAIN])), 24)


def test_restoring_refuses_state_of_other_settings_or_bad_values():
    itq = fitted("itq", bits=16)
    config, state = itq.config(), itq.state_tensors()
    with pytest.raises(CheckpointMismatchError, match=r"itq state rotation has shape \(16, 16\), expected \(8, 8\)"):
        load_shallow({**config, "bits": 8}, {**state, "projection": state["projection"][:, :8],
                                            "eigenvalues": state["eigenvalues"][:8]})
    with pytest.raises(CheckpointMismatchError, match=r"missing \['rotation'\]"):
        load_shallow(config, {k: v for k, v in state.items() if k != "rotation"})
    with pytest.raises(CheckpointMismatchError, match=r"quantization_error has shape \(52,\), expected \(12,\)"):
        load_shallow({**config, "options": {"iterations": 10}}, state)
    with pytest.raises(CheckpointMismatchError, match="a 'itq' config given to pcah"):
        SHALLOW["pcah"].from_state(config, state)
    with pytest.raises(CheckpointError, match="non-finite"):
        load_shallow(config, {**state, "mean": state["mean"] * math.inf})
    with pytest.raises(CheckpointError, match="config must have the keys"):
        load_shallow({"name": "itq"}, state)
    sh = fitted("sh", bits=8)
    broken = sh.state_tensors()
    broken["modes"][0] = 1
    with pytest.raises(CheckpointError, match="one positive frequency per row"):
        load_shallow(sh.config(), broken)


# ---------------------------------------------------------------- sanity on two clusters
def test_pcah_and_itq_separate_two_clusters_better_than_lsh():
    rng = np.random.default_rng(7)
    d = 32
    axis = rng.standard_normal(d)
    axis /= np.linalg.norm(axis)

    def clusters(n):
        y = rng.integers(0, 2, n)
        return rng.standard_normal((n, d)) + np.outer(np.where(y == 1, 4.0, -4.0), axis) + 3.0, y

    (train, _), (query, yq), (base, yb) = clusters(200), clusters(50), clusters(300)
    for bits in (8, 16):
        codes = {name: fitted(name, x=train, bits=bits) for name in ("lsh", "pcah", "itq")}
        score = {name: mean_average_precision(m.encode(query), m.encode(base), yq, yb) for name, m in codes.items()}
        assert score["itq"] > max(0.9, score["lsh"] + 0.05), score
        # PCAH's first bit lies along the clusters' axis: on its own it ranks every query perfectly
        one_bit = mean_average_precision(codes["pcah"].encode(query)[:, :1], codes["pcah"].encode(base)[:, :1], yq, yb)
        assert one_bit == 1.0 and one_bit > score["lsh"], score


def test_fitting_on_another_device_gives_the_cpu_codes(device):
    if device.type == "cpu":
        pytest.skip("compares another device (pytest --device cuda) with the CPU")
    for name in NAMES:
        cpu = fitted(name, seed=2)
        other = make_shallow(name, 16, seed=2).to(device).fit(stream(TRAIN, 7), 24)
        codes = other.encode(QUERY)
        assert codes.device.type == device.type
        assert torch.equal(codes.cpu(), cpu.encode(QUERY)), name
