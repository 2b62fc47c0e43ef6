"""Packed upper triangles against explicit loops on small matrices."""

from __future__ import annotations

import pytest
import torch

from llm_surgeon.math.symmetric import pack_upper, packed_width, unpack_upper


@pytest.mark.parametrize("n", [1, 2, 5, 17])
def test_pack_is_the_row_major_upper_triangle_and_unpack_rebuilds_the_matrix(n):
    x = torch.randn(3 * n + 2, n, dtype=torch.float64)
    matrix = x.T @ x
    packed = pack_upper(matrix)
    explicit = torch.tensor([float(matrix[i, j]) for i in range(n) for j in range(i, n)], dtype=torch.float64)
    assert torch.equal(packed, explicit)
    assert torch.equal(unpack_upper(packed), matrix.triu() + matrix.triu(1).T)
    torch.testing.assert_close(unpack_upper(packed), matrix)


def test_sums_of_packed_statistics_are_the_packed_sum():
    batches = [torch.randn(7, 4) for _ in range(3)]
    total = sum(pack_upper(b.T @ b) for b in batches)
    torch.testing.assert_close(unpack_upper(total), sum(b.T @ b for b in batches))


def test_packed_width_inverts_the_triangle_length_and_refuses_others():
    for n in range(1, 40):
        assert packed_width(n * (n + 1) // 2) == n
    for bad in (2, 4, 5, 7):
        with pytest.raises(ValueError):
            packed_width(bad)
