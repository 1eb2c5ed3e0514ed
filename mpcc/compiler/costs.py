"""The cost of every secure protocol, in one place.

The compiler's cost model sums these per instruction; the protocol tests assert that the
bytes and rounds the transport counts are exactly these. Conventions:

- `rounds`: online communication rounds (each compute party sends one message, then waits).
- `sent`: bytes each compute party sends to the other online (the protocols are symmetric).
- `dealer`: bytes the dealer sends to P1 for one query (P0's material all comes from its seed,
  but for FSS keys, whose common words go to P0 too: `calls.Call.dealer_p0`).
- `macs`: ring multiply-adds each compute party does online (linear layers only).
- `setup`: bytes each compute party sends once per session (opening the masked weights).

Boolean values are bit-sliced: 64 elements share one uint64 word, so boolean traffic is in
words of `words(n) = ceil(n / 64)`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

WORD = 8  # bytes per ring element / packed word

# Comparison tree over the low 62 bits of the opened value: four nodes to a parent, so
# 62 -> 16 -> 4 -> 1 in three levels (`mpcc.runtime.bitslice`). The first level is local:
# its leaves are public bits of c against the dealer's bits of r, and the dealer shares the
# 11 products of two or more of each group's four r bits. Per group and packed word a later
# level opens 7 masked wires (eq of the four children, lt of the lower three) and takes the
# dealer's 22 monomials of their masks.
COMPARE_BITS = 62
COMPARE_GROUPS = (16, 4, 1)
COMPARE_ROUNDS = len(COMPARE_GROUPS) - 1  # the opened levels
COMPARE_WIRES = 7 * sum(COMPARE_GROUPS[1:])  # 35 words opened per packed word
COMPARE_MONOMIALS = 11 * COMPARE_GROUPS[0] + 22 * sum(COMPARE_GROUPS[1:])  # 286 dealer words
MASK_BITS = COMPARE_BITS + 1  # bits 0..62 of the mask r are shared as bits


def words(n: int) -> int:
    """Packed uint64 words holding n bits."""
    return -(-n // 64)


@dataclass(frozen=True)
class Cost:
    """Online and offline cost of one instruction (or a sum of them)."""

    rounds: int = 0
    sent: int = 0
    dealer: int = 0
    macs: int = 0
    setup: int = 0

    def __add__(self, other: Cost) -> Cost:
        return Cost(*(a + b for a, b in zip(self.astuple(), other.astuple(), strict=True)))

    def astuple(self) -> tuple[int, ...]:
        return (self.rounds, self.sent, self.dealer, self.macs, self.setup)

    def asdict(self) -> dict[str, int]:
        return asdict(self)


FREE = Cost()


def linear(x_elems: int, z_elems: int, macs: int) -> Cost:
    """Bilinear layer L(X, W) with a matrix/conv Beaver triple, W masked once per session.

    Online: open E = X - A (one round). Dealer: the correction of C = L(A, B) for P1.
    """
    return Cost(rounds=1, sent=WORD * x_elems, dealer=WORD * z_elems, macs=macs)


def weight_opening(w_elems: int) -> Cost:
    """Opening F = W - B once per session for a secret weight tensor."""
    return Cost(setup=WORD * w_elems)


def multiply(x_elems: int, y_elems: int, z_elems: int) -> Cost:
    """Elementwise product of two secrets (with broadcasting) with a fresh Beaver triple."""
    return Cost(rounds=1, sent=WORD * (x_elems + y_elems), dealer=WORD * z_elems, macs=z_elems)


def matmul_ss(x_elems: int, y_elems: int, z_elems: int, macs: int) -> Cost:
    """X @ Y of two secrets with a fresh matrix Beaver triple (A, B, C = A @ B).

    Online: open E = X - A and F = Y - B together (one round); each party then evaluates two
    products, E @ [B] and [A] @ F (P0 folds E @ F into the first). Dealer: the correction
    [C]_1 for P1. `macs` is one product's multiply-adds."""
    return Cost(rounds=1, sent=WORD * (x_elems + y_elems), dealer=WORD * z_elems, macs=2 * macs)


def square(n: int) -> Cost:
    """X * X with a Beaver pair (A, A^2): open E = X - A once (half a product's traffic)."""
    return Cost(rounds=1, sent=WORD * n, dealer=WORD * n, macs=n)


def truncate(n: int) -> Cost:
    """Known-MSB truncation with a 2^62 bias: open c = x + 2^62 + r; corrections r_hi, r_63."""
    return Cost(rounds=1, sent=WORD * n, dealer=2 * WORD * n)


def powers(n: int, levels: int, products: int, squares: int) -> Cost:
    """Powers of one secret with every wire opened once (`runtime/protocols/powers.py`).

    Round 1 truncates the input (opening c = x + 2^62 + r); each later round computes one
    level's products locally from the opened wires and the dealer's mask products, and
    truncates them (one opening each). Dealer: each wire's truncation corrections [r_hi],
    [r_63]; per product the mask cross terms (4 words, 2 for a square)."""
    wires = 1 + products
    cross = 4 * (products - squares) + 2 * squares
    return Cost(
        rounds=1 + levels,
        sent=WORD * n * wires,
        dealer=WORD * n * (2 * wires + cross),
        macs=n * products,
    )


def relu(n: int, shift: int = 0) -> Cost:
    """ReLU of x (optionally of x truncated by `shift` bits) by masked opening + bit tree.

    Round 1 opens c = x + 2^62 + r. Rounds 2..3 evaluate the comparison tree's second and
    third levels, one level of masked wires each (the first is local); round 2 also opens
    d = y - sigma for the select. Round 4 opens e = t xor rho (one bit per element).
    Dealer: bits 0..62 of r, the products of the leaf groups' r bits, the tree's mask
    monomials, [rho], [rho*sigma], and with a shift the truncation corrections [r_hi],
    [r_63].
    """
    w = words(n)
    sent = WORD * n + WORD * n + WORD * COMPARE_WIRES * w + WORD * w
    dealer = WORD * (MASK_BITS + COMPARE_MONOMIALS) * w + 2 * WORD * n
    if shift:
        dealer += 2 * WORD * n
    return Cost(rounds=2 + COMPARE_ROUNDS, sent=sent, dealer=dealer)


def sign(n: int) -> Cost:
    """[x >= 0] as an arithmetic bit: a ReLU without its select (no d opening, no
    [rho sigma]): round 1 opens c, rounds 2..3 the tree, round 4 opens e."""
    w = words(n)
    sent = WORD * n + WORD * COMPARE_WIRES * w + WORD * w
    dealer = WORD * (MASK_BITS + COMPARE_MONOMIALS) * w + WORD * n
    return Cost(rounds=2 + COMPARE_ROUNDS, sent=sent, dealer=dealer)


def max_pairs_sizes(k: int, relu: bool = False) -> tuple[int, int]:
    """For a max over k candidates by all pairs (with a ReLU: each also against 0): the
    comparisons, and the dealer's AND monomials per candidate (the products of two or more
    of its win bits' masks)."""
    bits = k - 1 + relu
    return k * (k - 1) // 2 + (k if relu else 0), 2**bits - bits - 1


def max_pairs(n: int, k: int, relu: int | None = None) -> Cost:
    """The max of k candidates for each of n outputs, every pair compared at once
    (`runtime/protocols/max_pairs.py`), optionally with the ReLU after it and `relu` bits
    truncated: 5 rounds for any k, against the tournament's 4 per level (8 for k = 3 or 4,
    and 4 more for the ReLU).

    Round 1 opens c = x_i - x_j + 2^62 + r for all k(k-1)/2 pairs (and c = x_i + 2^62 + r
    for each candidate, with a ReLU); rounds 2..3 are their comparison trees (round 2 also
    opens d = y - sigma for every candidate); round 4 opens each comparison bit under a
    fresh mask, so that each candidate's AND of its win bits is local with the dealer's mask
    monomials; round 5 opens e = win xor rho per candidate, and the output is the sum of the
    daBit selects. Dealer: the trees' material, the AND monomials, [rho], [rho sigma] per
    candidate, and with a truncating ReLU [r_hi], [r_63] per candidate."""
    cmps, monos = max_pairs_sizes(k, relu is not None)
    m, w = cmps * n, words(n)
    sent = WORD * (m + k * n + COMPARE_WIRES * words(m) + cmps * w + k * w)
    dealer = WORD * ((MASK_BITS + COMPARE_MONOMIALS) * words(m) + k * monos * w + 2 * k * n)
    if relu:
        dealer += 2 * WORD * k * n
    return Cost(rounds=3 + COMPARE_ROUNDS, sent=sent, dealer=dealer)


# Function secret sharing (BCG+21 DCF, `mpcc.runtime.dcf`): the comparison's 62 low bits.
DCF_BITS = COMPARE_BITS


def dcf_key(n: int, ring: bool = True, bits: int = DCF_BITS) -> int:
    """Bytes of the correction words common to both keys of n DCFs on `bits`-bit inputs: per
    level a 128-bit seed word, two control bits and a value (64 bits, or 1 bit with `ring`
    False), and a final value. Both parties receive them (P0 as well as P1)."""
    w = words(n)
    if ring:
        return WORD * (bits * (3 * n + 2 * w) + n)
    return WORD * (bits * (2 * n + 3 * w) + w)


def relu_fss_bits(shift: int) -> int:
    """Input bits of the FSS ReLU's DCF: the sign needs only bits shift..61 of the opened
    value when `shift` bits are truncated (`runtime.protocols.relu_fss`)."""
    return DCF_BITS - min(shift, DCF_BITS - 1)


def sign_fss(n: int) -> Cost:
    """[x >= 0] by FSS in one round: open c = x + 2^62 + r, then evaluate a 64-bit-output DCF
    locally. Dealer: the DCF's common words (~1.5 KB per element), to P1 here and the same
    words again to P0 (`calls.SignFss.dealer_p0`); the roots and r come from the seeds."""
    return Cost(rounds=1, sent=WORD * n, dealer=dcf_key(n, ring=True))


def relu_fss(n: int, shift: int = 0) -> Cost:
    """ReLU (optionally of x truncated by `shift` bits) by FSS in two rounds: round 1 opens
    c = x + 2^62 + r (and d = x - sigma when shift is 0), round 2 opens the one-bit
    e = [x >= 0] ^ rho (and d = y - sigma with a shift). Dealer to P1: a one-bit-output DCF
    on `relu_fss_bits(shift)` bits (~1 KB per element at shift 0, ~0.75 KB at 16; the same
    words again to P0), [rho], [rho sigma], and with a shift [r_hi], [r_63]."""
    dealer = dcf_key(n, ring=False, bits=relu_fss_bits(shift)) + 2 * WORD * n
    if shift:
        dealer += 2 * WORD * n
    return Cost(rounds=2, sent=2 * WORD * n + WORD * words(n), dealer=dealer)
