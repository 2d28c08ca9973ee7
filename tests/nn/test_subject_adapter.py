import pytest
import torch

from litbrain.errors import SubjectMismatchError
from litbrain.nn import BrainDecoder, SubjectAdapter, freeze_all_but_adapters


@pytest.mark.parametrize("kind", ["linear", "sttm"])
def test_each_subject_maps_its_own_feature_count_to_the_shared_width(kind):
    adapter = SubjectAdapter({"sub-01": 30, "sub-02": 20}, out_features=8, kind=kind)
    assert adapter(torch.randn(4, 30), "sub-01").shape == (4, 8)
    assert adapter(torch.randn(4, 20), "sub-02").shape == (4, 8)
    # Channels-last also covers sEEG-shaped input (batch, time, channels).
    assert adapter(torch.randn(2, 5, 20), "sub-02").shape == (2, 5, 8)


def test_forward_groups_concatenates_in_dict_order_through_each_subjects_own_map():
    adapter = SubjectAdapter({"a": 3, "b": 5}, out_features=4)
    xa, xb = torch.randn(2, 3), torch.randn(3, 5)
    out = adapter.forward_groups({"b": xb, "a": xa})
    torch.testing.assert_close(out[:3], adapter(xb, "b"))
    torch.testing.assert_close(out[3:], adapter(xa, "a"))


def test_wrong_feature_count_and_unknown_subject_give_clear_errors():
    adapter = SubjectAdapter({"sub-01": 30}, out_features=8)
    with pytest.raises(ValueError, match="sub-01.*29 features.*expects 30"):
        adapter(torch.randn(1, 29), "sub-01")
    with pytest.raises(SubjectMismatchError, match="sub-09"):
        adapter(torch.randn(1, 30), "sub-09")


def test_add_subject_later_and_freeze_everything_else():
    model = BrainDecoder(subjects={"sub-01": 30, "sub-02": 20}, image_embedding_shape=[6], width=16, n_blocks=2)
    model.adapter.add_subject("sub-03", 25)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainable = freeze_all_but_adapters(model, ["sub-03"])
    assert trainable and all(name.startswith("sub-03.") for name in trainable)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    out = model({"sub-03": torch.randn(4, 25)})
    out["image_projection"].pow(2).sum().backward()
    opt.step()
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("adapter.maps.sub-03.") for k in changed)


def test_duplicate_subject_is_refused():
    adapter = SubjectAdapter({"sub-01": 3}, out_features=4)
    with pytest.raises(ValueError, match="already has an adapter"):
        adapter.add_subject("sub-01", 3)
