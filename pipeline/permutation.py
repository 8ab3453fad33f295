"""A seeded order over ``[0, n)`` that is fresh every epoch and never stored: sampling without replacement.

:class:`EpochOrder` maps a position ``p >= 0`` of an endless stream to an item of ``[0, n)``: epoch
``p // n`` visits every item exactly once, in the order ``permute(p % n)`` keyed by ``(seed, epoch)``.
The permutation is a keyed Feistel network over ``[0, a*b)`` with ``a = ceil(sqrt(n))``,
``b = ceil(n / a)`` (the halves live in Z_a and Z_b, alternating, so any ``n`` works), restricted to
``[0, n)`` by cycle walking. ``a*b - n < a``, so a walk takes one more step for fewer than
``1/sqrt(n)`` of the items. So any position costs O(rounds) vectorised integer ops, whatever ``n`` and
whatever came before: no array of ``n`` items, no state but the keys (48 bytes per epoch). The round
keys and round function are splitmix64, written out here, so the order does not depend on the numpy
version. :class:`BatchOrder` deals the stream out to ranks and steps, computing the rows of a block of
consecutive steps in one vectorised pass (a few numpy calls per Feistel round cost the same for 32 items
as for 4,096). README.md, "Design" (Sampler).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

__all__ = ["BatchOrder", "EpochOrder", "feistel_decrypt", "feistel_encrypt", "split_domain"]

ROUNDS = 6  # Feistel rounds: even, so the halves end in the sizes they started with
_M64 = (1 << 64) - 1
_GOLDEN = 0x9E37_79B9_7F4A_7C15
_C1 = 0xBF58_476D_1CE4_E5B9
_C2 = 0x94D0_49BB_1331_11EB
# First word of the key chain; keeps this order apart from any other use of the same seed.
_ORDER_STREAM = 0x6F77_7470_7065_726D  # "owtpperm", v1


def _splitmix(x: int) -> int:
    """splitmix64 of a Python int (key derivation: a handful per epoch, not per item)."""
    z = (x + _GOLDEN) & _M64
    z = ((z ^ (z >> 30)) * _C1) & _M64
    z = ((z ^ (z >> 27)) * _C2) & _M64
    return z ^ (z >> 31)


_S30, _S27, _S31 = np.uint64(30), np.uint64(27), np.uint64(31)
_U1, _U2 = np.uint64(_C1), np.uint64(_C2)


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on a uint64 array, in place (numpy's uint64 products wrap mod 2**64)."""
    z ^= z >> _S30
    z *= _U1
    z ^= z >> _S27
    z *= _U2
    z ^= z >> _S31
    return z


def epoch_keys(seed: int, epoch: int, rounds: int = ROUNDS) -> list[int]:
    """The ``rounds`` 64-bit round keys of ``(seed, epoch)``; any non-negative seed (longer ones folded)."""
    if seed < 0 or epoch < 0:
        raise ValueError(f"seed and epoch must be >= 0, got seed={seed}, epoch={epoch}")
    h = _splitmix(_ORDER_STREAM)
    while True:  # 64 bits at a time, so seeds past 2**64 stay distinct from their low word
        h = _splitmix(h ^ (seed & _M64))
        seed >>= 64
        if not seed:
            break
    if epoch > _M64:
        raise ValueError(f"epoch must be < 2**64, got {epoch}")
    h = _splitmix(h ^ epoch)
    return [_splitmix(h + j) for j in range(rounds)]


def split_domain(n: int) -> tuple[int, int]:
    """``(a, b)`` with ``a * b >= n`` and ``a * b - n < a``: the smallest near-square Feistel domain."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    a = math.isqrt(n - 1) + 1  # ceil(sqrt(n))
    return a, -(-n // a)


def _round_f(half: np.ndarray, key: np.ndarray, modulus: int) -> np.ndarray:
    """The round function: a keyed 64-bit hash of ``half``, reduced mod ``modulus``."""
    return _mix(half ^ key) % np.uint64(modulus)


def feistel_encrypt(x: np.ndarray, a: int, b: int, keys: np.ndarray) -> np.ndarray:
    """A bijection of ``[0, a*b)`` (uint64 in, uint64 out); ``keys``: (rounds, 1 or len(x)) uint64.

    The state is ``(L, R)`` with ``L`` in Z_p, ``R`` in Z_q, starting at ``(x mod a, x div a)``; a round
    maps it to ``(R, (L + F(R)) mod p)``, which swaps the moduli, so an even round count ends in
    ``(Z_a, Z_b)`` again and ``L + a*R`` is back in ``[0, a*b)``. Each round is invertible given its key.
    """
    p, q = np.uint64(a), np.uint64(b)
    left, right = x % p, x // p
    for key in keys:
        left, right = right, (left + _round_f(right, key, int(p))) % p
        p, q = q, p
    return left + np.uint64(a) * right


def feistel_decrypt(y: np.ndarray, a: int, b: int, keys: np.ndarray) -> np.ndarray:
    """The inverse of :func:`feistel_encrypt` with the same ``a, b, keys``."""
    p, q = np.uint64(a), np.uint64(b)  # moduli of (left, right) after the last (even) round
    left, right = y % p, y // p
    for key in keys[::-1]:
        # before this round: left' in Z_q, right' in Z_p with left = right', right = (left' + F) mod q
        f = _round_f(left, key, int(q))
        left, right = (right + q - f) % q, left
        p, q = q, p
    return left + np.uint64(a) * right


_Feistel = Callable[[np.ndarray, int, int, np.ndarray], np.ndarray]


class EpochOrder:
    """Positions ``0, 1, 2, ...`` -> items of ``[0, n)``: each epoch of ``n`` positions is a permutation.

    ``items(p)`` is a pure function of ``(n, seed, p)``; epochs differ by their keys.
    """

    def __init__(self, n: int, seed: int, rounds: int = ROUNDS):
        if rounds < 2 or rounds % 2:
            raise ValueError(f"rounds must be an even number >= 2, got {rounds}")
        self.n = int(n)
        self.a, self.b = split_domain(self.n)
        self.seed = int(seed)
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.rounds = rounds
        self._cached: tuple[int, int, np.ndarray] | None = None  # (first epoch, count, keys): a memo

    def _keys(self, first: int, count: int) -> np.ndarray:
        """(rounds, count) uint64 keys of epochs ``first .. first + count - 1``."""
        cached = self._cached  # one read: another thread may replace it, never mutate it
        if cached is not None and cached[0] == first and cached[1] == count:
            return cached[2]
        cols = [epoch_keys(self.seed, first + e, self.rounds) for e in range(count)]
        keys = np.array(cols, dtype=np.uint64).T.copy()
        self._cached = (first, count, keys)
        return keys

    def permute(self, i: np.ndarray, epoch: np.ndarray | int) -> np.ndarray:
        """Item at index ``i`` (int64 in ``[0, n)``) of ``epoch``'s order (int64 out, same shape)."""
        return self._walk(i, epoch, feistel_encrypt)

    def index_of(self, item: np.ndarray, epoch: np.ndarray | int) -> np.ndarray:
        """The inverse of :meth:`permute`: where ``item`` comes in ``epoch``'s order."""
        return self._walk(item, epoch, feistel_decrypt)

    def _walk(self, values: np.ndarray, epoch: np.ndarray | int, feistel: _Feistel) -> np.ndarray:
        values = np.asarray(values, dtype=np.int64)
        epoch = np.broadcast_to(np.asarray(epoch, dtype=np.int64), values.shape)
        if values.size == 0:
            return values.copy()
        if int(values.min()) < 0 or int(values.max()) >= self.n:
            raise ValueError(
                f"values must lie in [0, {self.n}), got {int(values.min())}..{int(values.max())}"
            )
        first = int(epoch.min())
        keys = self._keys(first, int(epoch.max()) - first + 1)
        if keys.shape[1] > 1:
            keys = keys[:, epoch - first]
        y = feistel(values.astype(np.uint64), self.a, self.b, keys)
        out = y >= np.uint64(self.n)
        # cycle walking: a bijection of [0, a*b) restricted to [0, n) by re-applying it until the value is
        # back in range; x's own cycle returns to [0, n), so it ends, after one step for all but < 1/sqrt(n)
        while out.any():
            y[out] = feistel(y[out], self.a, self.b, keys if keys.shape[1] == 1 else keys[:, out])
            out = y >= np.uint64(self.n)
        return y.astype(np.int64)

    def items(self, positions: np.ndarray) -> np.ndarray:
        """Items at stream ``positions`` (int64 >= 0): ``p`` is index ``p % n`` of epoch ``p // n``."""
        positions = np.asarray(positions, dtype=np.int64)
        epoch, i = np.divmod(positions, self.n)
        return self.permute(i, epoch)


class BatchOrder:
    """The items of one rank's batch at each step: step ``s`` of the global batch is stream positions
    ``s * world * B .. (s + 1) * world * B - 1``, and rank ``r`` takes ``r, r + world, ...`` of them.

    ``items(step)`` is a pure function of ``(n, seed, B, rank, world, step)``. Rows are made for
    ``steps_per_block`` consecutive steps at a time and the newest block is kept: at most
    ``BLOCK_ROWS`` int64 (32 KiB), whatever ``n``.
    """

    BLOCK_ROWS = 4096

    def __init__(self, n: int, seed: int, *, batch_size: int, rank: int, world_size: int):
        self.order = EpochOrder(n, seed)
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size
        self.steps_per_block = max(1, self.BLOCK_ROWS // batch_size)
        self._lanes = rank + world_size * np.arange(batch_size, dtype=np.int64)  # this rank's rows
        self._block: tuple[int, np.ndarray] | None = None  # (block index, (steps, B) items): a memo

    def items(self, step: int) -> np.ndarray:
        """Items of this rank's rows at ``step`` (int64, stream order, a read-only view)."""
        k = self.steps_per_block
        block, row = divmod(step, k)
        cached = self._block  # one read: the prefetch thread may replace it, never mutates it
        if cached is None or cached[0] != block:
            steps = block * k + np.arange(k, dtype=np.int64)
            positions = steps[:, None] * (self.world_size * self.batch_size) + self._lanes
            items = self.order.items(positions.reshape(-1)).reshape(k, self.batch_size)
            items.flags.writeable = False
            cached = (block, items)
            self._block = cached
        return cached[1][row]
