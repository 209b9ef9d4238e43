"""Queue positions of the fair queue (generation/scheduler.py) in O(depth + log users).

The dispatch order is round by round: round ``d`` holds the ``d``-th queued item of every
user with more than ``d`` items, users in rotation order. So the item at depth ``d`` of user
``u`` is at

    1 + (items in rounds before d) + (users ahead of u in the rotation with more than d items)

:class:`RotationIndex` keeps both terms cheap. The first is a sum over ``d`` per-round counts
(the depth is bounded by the per-user queue cap, a small number). The second is a rank: every
user holds a rotation sequence number, increasing toward the back of the rotation and renewed
when the user moves to the back; round ``d`` keeps a Fenwick tree over sequence numbers of the
users in it. When the sequence numbers run out they are renumbered (O(rounds) per move,
amortized: a rebuild after at least capacity/2 moves) or, with over half of them in use,
the trees doubled.
"""

from __future__ import annotations

_MIN_CAPACITY = 64  # a power of two: Fenwick.kth walks powers of two


class Fenwick:
    """Counts at slots 1..capacity: add, prefix sums and the k-th counted slot in O(log)."""

    __slots__ = ("tree",)

    def __init__(self, capacity: int, slots: list[int] | None = None) -> None:
        """``slots``: the counted slots (built in O(capacity) rather than one add each)."""
        tree = [0] * (capacity + 1)
        if slots:
            for slot in slots:
                tree[slot] = 1
            for i in range(1, capacity + 1):
                parent = i + (i & -i)
                if parent <= capacity:
                    tree[parent] += tree[i]
        self.tree = tree

    @property
    def capacity(self) -> int:
        return len(self.tree) - 1

    def add(self, slot: int, delta: int) -> None:
        tree, size = self.tree, len(self.tree)
        while slot < size:
            tree[slot] += delta
            slot += slot & -slot

    def prefix(self, slot: int) -> int:
        """How many counted slots are ≤ ``slot``."""
        tree, total = self.tree, 0
        while slot > 0:
            total += tree[slot]
            slot -= slot & -slot
        return total

    def kth(self, k: int) -> int:
        """The ``k``-th counted slot (1-based; ``k`` ≤ the count)."""
        tree, slot, step = self.tree, 0, (len(self.tree) - 1) >> 1
        while step:  # slot + step stays below the (power-of-two) capacity
            if tree[slot + step] < k:
                slot += step
                k -= tree[slot]
            step >>= 1
        return slot + 1

    def double(self, total: int) -> None:
        """Twice the capacity; ``total`` is the count so far (the new root's)."""
        capacity = self.capacity
        self.tree.extend([0] * capacity)
        self.tree[2 * capacity] = total  # the only new node covering old slots: all of them


class RotationIndex:
    """Queue lengths and rotation order of the users that have queued items."""

    def __init__(self) -> None:
        self._length: dict[int, int] = {}
        self._seq: dict[int, int] = {}  # user → rotation sequence number
        self._user_at: dict[int, int] = {}  # sequence number → user
        self._next_seq = 1
        self._capacity = _MIN_CAPACITY
        self._rounds: list[Fenwick] = []  # round d: the users with more than d items
        self._counts: list[int] = []  # users per round

    @property
    def depth(self) -> int:
        """The number of rounds, the empty last ones included (they are kept: allocating a
        round per new depth would cost O(capacity))."""
        return len(self._counts)

    def count(self, depth: int) -> int:
        """How many items round ``depth`` holds (one per user with more than ``depth``)."""
        return self._counts[depth] if depth < len(self._counts) else 0

    def before(self, depth: int) -> int:
        """How many items the rounds before ``depth`` hold."""
        return sum(self._counts[:depth])

    def position(self, user: int, depth: int) -> int:
        """1-based dispatch position of ``user``'s item at ``depth``."""
        seq = self._seq[user]
        if seq == self._next_seq - 1:  # at the back (a new user): everyone in the round is ahead
            ahead = self._counts[depth] - 1
        else:
            ahead = self._rounds[depth].prefix(seq - 1)
        return 1 + self.before(depth) + ahead

    def users_in_round(self, depth: int, after: int, limit: int) -> list[int]:
        """The users of round ``depth`` ranked ``after`` + 1 … ``after`` + ``limit`` (fewer at
        the round's end), in rotation order: O(log users) each."""
        kth, user_at = self._rounds[depth].kth, self._user_at
        last = min(after + limit, self.count(depth))
        return [user_at[kth(rank)] for rank in range(after + 1, last + 1)]

    # -- changes ------------------------------------------------------------------------------

    def append(self, user: int) -> None:
        """``user`` queued one more item (a new user joins at the back of the rotation)."""
        length = self._length.get(user, 0)
        if length == 0:
            self._place_at_back(user)
        self._length[user] = length + 1
        if length == len(self._rounds):
            self._rounds.append(Fenwick(self._capacity))
            self._counts.append(0)
        self._join(length, self._seq[user])

    def pop(self, user: int) -> None:
        """``user`` has one item fewer (taken or removed); with none left it leaves."""
        length = self._length[user] - 1
        self._leave(length, self._seq[user])
        if length:
            self._length[user] = length
            return
        del self._length[user]
        del self._user_at[self._seq.pop(user)]

    def move_to_back(self, user: int) -> None:
        """``user`` goes to the back of the rotation (it was just served)."""
        old = self._seq.pop(user)
        del self._user_at[old]
        for depth in range(self._length[user]):
            self._leave(depth, old)
        self._place_at_back(user)
        for depth in range(self._length[user]):
            self._join(depth, self._seq[user])

    def _join(self, depth: int, seq: int) -> None:
        self._rounds[depth].add(seq, 1)
        self._counts[depth] += 1

    def _leave(self, depth: int, seq: int) -> None:
        self._rounds[depth].add(seq, -1)
        self._counts[depth] -= 1

    def _place_at_back(self, user: int) -> None:
        """A new sequence number for ``user`` (not counted in any round yet)."""
        if self._next_seq > self._capacity:
            if 2 * len(self._seq) >= self._capacity:
                for depth, tree in enumerate(self._rounds):
                    tree.double(self._counts[depth])
                self._capacity *= 2
            else:
                self._compact()
        self._seq[user] = self._next_seq
        self._user_at[self._next_seq] = user
        self._next_seq += 1

    def _compact(self) -> None:
        """Number the users 1..n again in rotation order and rebuild the rounds, the empty
        last ones dropped: O(n log n + capacity · rounds), once at least capacity/2 > n
        sequence numbers were used since the last time."""
        del self._counts[max(self._length.values(), default=0) :]  # a moving user included
        users = sorted(self._seq, key=self._seq.__getitem__)
        self._capacity = max(_MIN_CAPACITY, 1 << (2 * len(users)).bit_length())
        self._seq = {user: seq for seq, user in enumerate(users, start=1)}
        self._user_at = dict(enumerate(users, start=1))
        self._next_seq = len(users) + 1
        self._rounds = [
            Fenwick(
                self._capacity,
                [seq for user, seq in self._seq.items() if self._length[user] > depth],
            )
            for depth in range(len(self._counts))
        ]
