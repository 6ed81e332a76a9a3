"""Aggregation maths: equal confidences average, one-hot selects, permutations and padding do not matter,
the strategies are what the paper defines, and gradients stay finite where weights vanish."""

import pytest
import torch

from networks.aggregation import (
    aggregate,
    confidence_sum,
    mean_aggregate,
    most_confident_image,
    s1_aggregate,
    s2_aggregate,
    s3_aggregate,
    s4_aggregate,
    weighted_identity,
)

B, N, K = 3, 5, 7


@pytest.fixture
def sets():
    identity = torch.randn(B, N, K, dtype=torch.float64)
    valid = torch.ones(B, N, dtype=torch.bool)
    return identity, valid


def test_equal_confidences_give_the_mean(sets):
    identity, valid = sets
    for value in (0.5, 1e-3, 0.97):
        confidence = torch.full((B, N, K), value, dtype=torch.float64)
        torch.testing.assert_close(s4_aggregate(identity, confidence, valid), identity.mean(1))
        torch.testing.assert_close(s2_aggregate(identity, confidence, valid), identity.mean(1))
        torch.testing.assert_close(s1_aggregate(identity, confidence[..., :1], valid), identity.mean(1))
    torch.testing.assert_close(mean_aggregate(identity, valid), identity.mean(1))


def test_one_hot_confidences_select_one_image_per_coefficient(sets):
    identity, valid = sets
    choice = torch.randint(0, N, (B, K))
    confidence = torch.nn.functional.one_hot(choice, N).permute(0, 2, 1).double()  # (B, N, K)
    expected = identity.gather(1, choice.unsqueeze(1)).squeeze(1)
    torch.testing.assert_close(s4_aggregate(identity, confidence, valid), expected)


def test_weighted_mean_matches_the_formula(sets):
    identity, valid = sets
    confidence = torch.rand(B, N, K, dtype=torch.float64)
    expected = (confidence * identity).sum(1) / confidence.sum(1)
    torch.testing.assert_close(s4_aggregate(identity, confidence, valid), expected)


def test_permuting_the_images_of_a_set_changes_nothing(sets):
    identity, valid = sets
    confidence = torch.rand(B, N, K, dtype=torch.float64)
    order = torch.randperm(N)
    for strategy in ("mean", "s2", "s3", "s4"):
        torch.testing.assert_close(
            aggregate(strategy, identity[:, order], valid, confidence[:, order]),
            aggregate(strategy, identity, valid, confidence),
        )


def test_padding_never_counts_even_when_it_holds_garbage():
    identity = torch.randn(2, 4, K, dtype=torch.float64)
    confidence = torch.rand(2, 4, K, dtype=torch.float64)
    valid = torch.tensor([[True, True, True, False], [True, False, False, False]])
    garbage_identity = torch.where(valid.unsqueeze(-1), identity, torch.full_like(identity, float("nan")))
    garbage_confidence = torch.where(valid.unsqueeze(-1), confidence, torch.full_like(confidence, 1e6))
    for strategy in ("mean", "s2", "s3", "s4"):
        result = aggregate(strategy, garbage_identity, valid, garbage_confidence)
        assert torch.isfinite(result).all()
        for b, n in ((0, 3), (1, 1)):
            alone = aggregate(strategy, identity[b : b + 1, :n], valid[b : b + 1, :n], confidence[b : b + 1, :n])
            torch.testing.assert_close(result[b : b + 1], alone)
    # A set of one picture is that picture, whatever its confidence.
    torch.testing.assert_close(s4_aggregate(identity, confidence, valid)[1], identity[1, 0])


def test_s1_s2_and_s3_definitions(sets):
    identity, valid = sets
    confidence = torch.rand(B, N, K, dtype=torch.float64)
    scalar = torch.rand(B, N, 1, dtype=torch.float64)
    torch.testing.assert_close(s1_aggregate(identity, scalar, valid), (scalar * identity).sum(1) / scalar.sum(1))
    total = confidence.sum(-1, keepdim=True)
    torch.testing.assert_close(confidence_sum(confidence), total)
    torch.testing.assert_close(s2_aggregate(identity, confidence, valid), (total * identity).sum(1) / total.sum(1))
    best = total.squeeze(-1).argmax(1)
    torch.testing.assert_close(s3_aggregate(identity, confidence, valid), identity[torch.arange(B), best])


def test_s3_never_selects_padding():
    identity = torch.randn(1, 3, K)
    confidence = torch.tensor([0.1, 0.2, 0.9]).view(1, 3, 1).expand(1, 3, K).contiguous()
    valid = torch.tensor([[True, True, False]])
    torch.testing.assert_close(most_confident_image(confidence, valid)[0, :, 0], torch.tensor([0.0, 1.0, 0.0]))
    torch.testing.assert_close(s3_aggregate(identity, confidence, valid), identity[:, 1])


def test_vanishing_weights_fall_back_to_the_mean_with_finite_gradients(sets):
    identity, valid = sets
    logits = torch.full((B, N, K), -200.0, dtype=torch.float64, requires_grad=True)
    result = s4_aggregate(identity, torch.sigmoid(logits) * 0.0, valid)
    torch.testing.assert_close(result, identity.mean(1))
    result.sum().backward()
    assert torch.isfinite(logits.grad).all()


def test_gradient_flows_to_confidences_not_through_padding():
    identity = torch.randn(1, 3, K)
    confidence = torch.rand(1, 3, K, requires_grad=True)
    valid = torch.tensor([[True, True, False]])
    s4_aggregate(identity, confidence, valid).sum().backward()
    assert confidence.grad[0, :2].abs().sum() > 0
    assert torch.equal(confidence.grad[0, 2], torch.zeros(K))


def test_clear_errors_for_wrong_inputs(sets):
    identity, valid = sets
    with pytest.raises(ValueError, match="unknown aggregation strategy"):
        aggregate("s5", identity, valid, None)
    with pytest.raises(ValueError, match="needs the C-Net"):
        aggregate("s4", identity, valid, None)
    with pytest.raises(ValueError, match="bool mask"):
        mean_aggregate(identity, valid.float())
    with pytest.raises(ValueError, match="confidences must have shape"):
        s4_aggregate(identity, torch.rand(B, N, 1), valid)
    with pytest.raises(ValueError, match="weights must be"):
        weighted_identity(identity, torch.rand(B, N, 2), valid)
