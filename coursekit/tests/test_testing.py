"""coursekit.testing: assert_close, the tolerance table and seeded inputs."""
import math

import pytest
import torch

from coursekit.testing import assert_close, assert_rejects, make_qkv, randn, tolerance


def test_equal_tensors_pass():
    x = randn(3, 4, seed=1)
    assert_close(x, x.clone())


def test_difference_within_tolerance_passes():
    expected = torch.ones(3, dtype=torch.float64)
    assert_close(expected.float() + 5e-6, expected)  # float32 atol is 1e-5


def test_failure_message_names_worst_element_values_and_hint():
    expected = torch.zeros(2, 3)
    actual = expected.clone()
    actual[0, 0] = 0.1
    actual[1, 2] = 0.5
    with pytest.raises(AssertionError) as err:
        assert_close(actual, expected, hint="did you subtract the max?")
    message = str(err.value)
    assert "2 of 6 elements" in message
    assert "worst at index (1, 2): expected 0, got 0.5" in message
    assert "hint: did you subtract the max?" in message


def test_shape_mismatch_message():
    with pytest.raises(AssertionError, match=r"output has shape \(2, 3\), expected \(3, 2\)"):
        assert_close(torch.zeros(2, 3), torch.zeros(3, 2))


def test_nan_where_reference_is_finite_fails_and_says_nan():
    with pytest.raises(AssertionError, match="1 NaN values where the reference has none"):
        assert_close(torch.tensor([1.0, math.nan]), torch.tensor([1.0, 2.0]))


def test_equal_infinities_pass():
    x = torch.tensor([math.inf, -math.inf, 0.0])
    assert_close(x, x.clone())


def test_opposite_infinities_fail():
    with pytest.raises(AssertionError, match="expected -inf, got inf"):
        assert_close(torch.tensor([math.inf]), torch.tensor([-math.inf]))


def test_probabilities_use_the_tighter_prob_atol():
    # 1/3000 computed as 1/2048 is off by 1.5e-4: below float16's atol (2e-3),
    # far above its prob_atol (1e-5).
    actual = torch.tensor([1 / 2048], dtype=torch.float16)
    expected = torch.tensor([1 / 3000], dtype=torch.float64)
    assert_close(actual, expected)
    with pytest.raises(AssertionError, match="atol=1e-05"):
        assert_close(actual, expected, probabilities=True)


def test_dtype_argument_overrides_the_tolerance():
    expected = torch.ones(3, dtype=torch.float64)
    actual = expected + 1e-3
    with pytest.raises(AssertionError):
        assert_close(actual, expected)  # float64 tolerance
    assert_close(actual, expected, dtype=torch.float16)


def test_tolerance_rejects_unknown_dtype():
    with pytest.raises(ValueError, match="int64"):
        tolerance(torch.int64)


def test_randn_is_reproducible_per_seed():
    assert torch.equal(randn(4, 5, seed=7), randn(4, 5, seed=7))
    assert not torch.equal(randn(4, 5, seed=7), randn(4, 5, seed=8))


def test_randn_honours_dtype_device_and_requires_grad(device):
    x = randn(2, 3, seed=0, dtype=torch.float16, device=device, requires_grad=True)
    assert x.dtype == torch.float16
    assert x.device.type == device
    assert x.requires_grad and x.is_leaf
    assert not randn(2, 3).requires_grad


def test_randn_gives_the_same_numbers_in_every_dtype():
    assert torch.equal(randn(8, seed=3, dtype=torch.float64), randn(8, seed=3).double())


def test_make_qkv_shapes():
    q, k, v = make_qkv(batch=2, heads=3, q_len=5, k_len=7, head_dim=8, v_dim=4)
    assert q.shape == (2, 3, 5, 8)
    assert k.shape == (2, 3, 7, 8)
    assert v.shape == (2, 3, 7, 4)


def test_make_qkv_defaults_key_length_and_value_dim_to_query_ones():
    q, k, v = make_qkv(q_len=6, head_dim=4)
    assert q.shape == k.shape == v.shape


def test_make_qkv_is_reproducible_and_draws_distinct_tensors():
    first, again, other = make_qkv(seed=5), make_qkv(seed=5), make_qkv(seed=6)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not any(torch.equal(a, b) for a, b in zip(first, other))
    q, k, v = first
    assert not torch.equal(q, k) and not torch.equal(k, v)


def test_make_qkv_honours_dtype_device_and_requires_grad(device):
    for t in make_qkv(dtype=torch.bfloat16, device=device, requires_grad=True):
        assert t.dtype == torch.bfloat16
        assert t.device.type == device
        assert t.requires_grad and t.is_leaf


def _raise(exc):
    raise exc


def test_assert_rejects_accepts_a_named_value_or_type_error():
    assert_rejects(lambda: _raise(ValueError("dim=5 is out of range")), "dim")
    assert_rejects(lambda: _raise(TypeError("x must be a torch.Tensor")), "y", "x")


@pytest.mark.parametrize("fn, fragment", [
    (lambda: None, "nothing was raised"),
    (lambda: _raise(RuntimeError("shape mismatch")), "RuntimeError"),
    (lambda: _raise(ValueError("bad input")), "should name the argument"),
], ids=["no-error", "bare-runtime-error", "unnamed-argument"])
def test_assert_rejects_fails_with_a_reason(fn, fragment):
    with pytest.raises(AssertionError, match=fragment):
        assert_rejects(fn, "dim")


# ------------------------------------------------------- failure messages --

def test_long_failure_messages_are_capped_and_keep_the_hint():
    from coursekit.testing import MAX_MESSAGE_CHARS, MAX_MESSAGE_LINES, assert_same_mask
    got = torch.zeros(3, 4, dtype=torch.bool)
    huge_what = "\n".join(f"line {i}" for i in range(500))  # a what/text far past the cap
    with pytest.raises(AssertionError) as err:
        assert_same_mask(got, ~got, what=huge_what, hint="the hint still shows")
    message = str(err.value)
    assert len(message.splitlines()) <= MAX_MESSAGE_LINES + 2
    assert len(message) <= MAX_MESSAGE_CHARS + 800
    assert "more characters cut" in message
    assert message.rstrip().endswith("hint: the hint still shows")


def test_rejects_caps_a_huge_error_message_from_the_code_under_test():
    def raises_with_a_tensor_in_the_message():
        raise ValueError(f"bad x: {torch.arange(10000).tolist()}")

    with pytest.raises(AssertionError) as err:
        assert_rejects(raises_with_a_tensor_in_the_message, "q")
    assert len(str(err.value)) < 1000


def test_helpers_hide_their_own_frames(tmp_path):
    # A failing assert_close shows the test's line and the message, not the helper's
    # source, even with pytest's long tracebacks.
    import subprocess
    import sys
    import textwrap

    from coursekit import COURSE_ROOT
    (tmp_path / "test_hidden.py").write_text(textwrap.dedent("""
        import torch
        from coursekit.testing import assert_close

        def test_wrong_axis():
            assert_close(torch.zeros(2, 3), torch.ones(2, 3), hint="softmax over the wrong dim?")
    """))
    run = subprocess.run([sys.executable, "-m", "pytest", "test_hidden.py", "-p", "no:cacheprovider", "--tb=long"],
                         cwd=tmp_path, env={"PYTHONPATH": str(COURSE_ROOT), "PATH": "/usr/bin:/bin"},
                         capture_output=True, text=True)
    out = run.stdout
    assert run.returncode == 1, out + run.stderr
    assert "def assert_close" not in out and "excess = torch.where" not in out, out
    assert "hint: softmax over the wrong dim?" in out
    assert len(out.splitlines()) < 40, out
