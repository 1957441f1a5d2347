"""The checkpoint checksum covers names, bytes and dtypes (tests/support/fault_corpus.py runs the same through
the CLI)."""
import torch

from fcnseg.models.checkpoint import state_checksum


def test_checksum_sees_a_dtype_change_with_the_same_bytes():
    zeros = torch.zeros(2, 3)
    same_bytes = zeros.to(torch.int32)  # equal values and identical bytes, another dtype
    assert zeros.view(torch.uint8).equal(same_bytes.view(torch.uint8))
    assert state_checksum({"w": zeros}) == state_checksum({"w": zeros.clone()})
    assert state_checksum({"w": zeros}) != state_checksum({"w": same_bytes})
    assert state_checksum({"w": zeros}) != state_checksum({"v": zeros})
