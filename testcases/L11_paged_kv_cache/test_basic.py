"""L11 basic suite: the paged KV cache (allocation on demand, slots, fork with
copy-on-write, free, block tables, running out of blocks) and paged attention
(equal to contiguous attention for random block tables and lengths, shared
blocks, GQA), the engine, bad input, and (part 2, marked `triton`) the Triton
kernel triton_paged_attention over pools whose unused slots are NaN.

Run: ./course test L11    (or: pytest testcases/L11_paged_kv_cache -m basic)
Expected values: the cache is checked through its public API only — what a
sequence holds is read back through block_tables / seq_lens and compared with
what the test wrote; paged attention is compared with coursekit.reference's
float64 einsum attention over keys gathered token by token in plain Python;
the Triton kernel with float64 SDPA over keys gathered by torch indexing.
"""
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from coursekit.reference import attention_ref
from coursekit.testing import assert_close, assert_rejects, assert_within_eager_error, randn

SLOT_HINT = "a slot is block_id * block_size + offset, with block_id = table[t // block_size], offset = t % block_size"
COW_HINT = ("fork shares blocks (reference counts); the first write into a SHARED, partly filled last block "
            "must copy it to a fresh block first, so the sibling never sees this sequence's new tokens")


def make_cache(num_blocks=16, block_size=4, num_layers=2, heads=2, head_dim=3, **kw):
    return lambda impl: impl.paged_kv_cache.PagedKVCache(num_layers, num_blocks, block_size, heads, head_dim, **kw)


def token_values(seq_tag, positions, heads=2, head_dim=3, layer=0):
    """A recognisable (n, heads, head_dim) vector per token: tag, position, layer."""
    pos = torch.as_tensor(list(positions), dtype=torch.float32)
    base = seq_tag * 1000.0 + pos * 10.0 + layer
    return base[:, None, None] + torch.arange(heads * head_dim, dtype=torch.float32).view(1, heads, head_dim) * 0.01


def read_back(cache, seq_id, layer=0):
    """The keys and values a sequence holds, gathered through its block table, token by token."""
    table = cache.block_tables([seq_id])[0].tolist()
    length = int(cache.seq_lens([seq_id])[0])
    bs = cache.block_size
    ks = [cache.k_pages[layer, table[t // bs], :, t % bs] for t in range(length)]
    vs = [cache.v_pages[layer, table[t // bs], :, t % bs] for t in range(length)]
    shape = (0, cache.num_kv_heads, cache.head_dim)
    return (torch.stack(ks) if ks else torch.zeros(shape)), (torch.stack(vs) if vs else torch.zeros(shape))


class Writer:
    """Appends recognisable tokens to sequences of a cache, keeping each sequence's length itself."""

    def __init__(self, cache):
        self.cache, self.lengths = cache, {}

    def append(self, seq_id, tag, n, layers=(0, 1)):
        start = self.lengths.get(seq_id, 0)
        slots = self.cache.allocate(seq_id, n)
        for layer in layers:
            vals = token_values(tag, range(start, start + n), self.cache.num_kv_heads, self.cache.head_dim, layer)
            self.cache.write(layer, slots, vals, -vals)
        self.lengths[seq_id] = start + n
        return slots

    def fork(self, src, dst):
        self.cache.fork(src, dst)
        self.lengths[dst] = self.lengths[src]


# ---------------------------------------------------------------- the cache --

def test_allocate_takes_blocks_only_when_needed(impl):
    cache = make_cache(num_blocks=8, block_size=4)(impl)
    assert cache.num_free_blocks == 8
    slots = cache.allocate("a", 3)
    assert slots.shape == (3,), f"allocate(seq, 3) must return 3 slots, got shape {tuple(slots.shape)}"
    assert cache.num_free_blocks == 7, f"3 tokens fit one block of 4; {8 - cache.num_free_blocks} were taken"
    cache.allocate("a", 1)
    assert cache.num_free_blocks == 7, "the 4th token still fits the first block: no new block"
    cache.allocate("a", 1)
    assert cache.num_free_blocks == 6, "the 5th token needs a second block"
    cache.allocate("a", 9)
    assert cache.num_free_blocks == 4, "14 tokens need ceil(14 / 4) = 4 blocks"
    assert cache.seq_lens(["a"]).tolist() == [14]


def test_slots_address_the_block_table(impl):
    cache = make_cache(num_blocks=8, block_size=4)(impl)
    cache.allocate("x", 2)                       # interleave two sequences so their blocks alternate
    first = cache.allocate("a", 6)
    cache.allocate("x", 5)
    second = cache.allocate("a", 3)
    table = cache.block_tables(["a"])[0].tolist()
    slots = torch.cat([first, second]).tolist()
    expected = [table[t // 4] * 4 + t % 4 for t in range(9)]
    assert slots == expected, f"slots {slots}, expected {expected} from table {table}: {SLOT_HINT}"


def test_write_then_read_back_every_layer(impl):
    cache = make_cache(num_blocks=10, block_size=3)(impl)
    writer = Writer(cache)
    for seq, tag, n in (("a", 1, 4), ("b", 2, 2), ("a", 1, 3), ("b", 2, 5)):
        writer.append(seq, tag, n)
    for seq, tag in (("a", 1), ("b", 2)):
        for layer in (0, 1):
            k, v = read_back(cache, seq, layer)
            n = k.shape[0]
            want = token_values(tag, range(n), 2, 3, layer)
            assert torch.equal(k, want) and torch.equal(v, -want), (
                f"sequence {seq!r}, layer {layer}: the tokens read back through the block table are not the ones "
                f"written; {SLOT_HINT}")


def test_block_tables_are_padded_with_minus_one(impl):
    cache = make_cache(num_blocks=10, block_size=2)(impl)
    cache.allocate("long", 7)
    cache.allocate("short", 1)
    tables = cache.block_tables(["short", "long"])
    assert tables.dtype == torch.int32 and tables.shape == (2, 4), (
        f"block_tables: expected int32 (S, max_blocks) = (2, 4), got {tables.dtype} {tuple(tables.shape)}")
    assert tables[0, 1:].tolist() == [-1, -1, -1], f"short row must be padded with -1, got {tables[0].tolist()}"
    assert len(set(tables[1].tolist())) == 4 and min(tables[1].tolist()) >= 0
    assert cache.seq_lens(["short", "long"]).tolist() == [1, 7]
    assert cache.seq_lens(["long"]).dtype == torch.int32


def test_free_returns_blocks_and_they_are_reused(impl):
    cache = make_cache(num_blocks=4, block_size=2)(impl)
    cache.allocate("a", 5)                          # 3 blocks
    assert cache.num_free_blocks == 1
    cache.free("a")
    assert cache.num_free_blocks == 4, "free must return every block of the sequence, the partly filled last one too"
    cache.allocate("b", 8)                          # all 4 blocks: only possible if all came back
    assert cache.num_free_blocks == 0


def test_running_out_raises_and_leaves_the_cache_unchanged(impl):
    cache = make_cache(num_blocks=3, block_size=4)(impl)
    cache.allocate("a", 6)
    before = (cache.num_free_blocks, cache.block_tables(["a"]).clone(), cache.seq_lens(["a"]).clone())
    with pytest.raises(MemoryError) as err:
        cache.allocate("a", 7)                      # 13 tokens need 4 blocks; 3 exist
    assert "block" in str(err.value).lower() or "pool" in str(err.value).lower(), (
        f"the MemoryError should name the block pool, got {err.value!r}")
    after = (cache.num_free_blocks, cache.block_tables(["a"]), cache.seq_lens(["a"]))
    assert before[0] == after[0] and torch.equal(before[1], after[1]) and torch.equal(before[2], after[2]), (
        "a failed allocate must take no block and change no length (check first, then take)")
    with pytest.raises(MemoryError):
        cache.allocate("new", 9)
    cache.allocate("a", 2)                          # what still fits, fits
    assert cache.seq_lens(["a"]).tolist() == [8]


def test_fork_shares_blocks(impl):
    cache = make_cache(num_blocks=8, block_size=4)(impl)
    Writer(cache).append("a", 1, 8)                 # two full blocks
    free = cache.num_free_blocks
    cache.fork("a", "b")
    assert cache.num_free_blocks == free, "fork must share the blocks, not copy them"
    assert torch.equal(cache.block_tables(["a"]), cache.block_tables(["b"]))
    assert cache.seq_lens(["b"]).tolist() == [8]
    cache.free("a")
    assert cache.num_free_blocks == free, (
        "freeing one of two sequences that share blocks must keep the blocks (reference counts)")
    k, _ = read_back(cache, "b")
    assert torch.equal(k, token_values(1, range(8))), "the fork's tokens changed after its source was freed"
    cache.free("b")
    assert cache.num_free_blocks == 8, "when the last holder is freed the shared blocks return to the pool"


def test_copy_on_write_of_a_partly_filled_shared_block(impl):
    cache = make_cache(num_blocks=8, block_size=4)(impl)
    writer = Writer(cache)
    writer.append("a", 1, 6)                        # blocks: [full, 2 of 4]
    writer.fork("a", "b")
    writer.append("b", 2, 1)                        # b writes into the shared partial block: copy first
    writer.append("a", 1, 1)                        # a writes too: a's block is now its own
    for layer in (0, 1):
        ka, va = read_back(cache, "a", layer)
        kb, vb = read_back(cache, "b", layer)
        want_a = token_values(1, range(7), layer=layer)
        want_b = torch.cat([token_values(1, range(6), layer=layer), token_values(2, [6], layer=layer)])
        assert torch.equal(ka, want_a) and torch.equal(va, -want_a), (
            f"layer {layer}: sequence a's tokens were changed by its fork's write; {COW_HINT}")
        assert torch.equal(kb, want_b) and torch.equal(vb, -want_b), (
            f"layer {layer}: the fork does not hold the shared prefix and its own token after copy-on-write "
            f"(the copy must cover every layer, keys and values); {COW_HINT}")
    ta, tb = cache.block_tables(["a"])[0].tolist(), cache.block_tables(["b"])[0].tolist()
    assert ta[0] == tb[0], "the full first block must stay shared (only the written block is copied)"
    assert ta[1] != tb[1], f"the partly filled block must be copied on write; {COW_HINT}"


def test_fork_of_full_blocks_needs_no_copy(impl):
    cache = make_cache(num_blocks=8, block_size=4)(impl)
    writer = Writer(cache)
    writer.append("a", 1, 4)
    writer.fork("a", "b")
    free = cache.num_free_blocks
    writer.append("b", 2, 1)
    assert cache.num_free_blocks == free - 1, "a fork whose last block is full needs one new block, no copy"
    assert torch.equal(read_back(cache, "a")[0], token_values(1, range(4)))


# ---------------------------------------------------- allocator, stateful --

class CacheMachine(RuleBasedStateMachine):
    """Random allocate / write / fork / free against a model of what each sequence holds."""

    def __init__(self):
        super().__init__()
        self.cache = self.impl.paged_kv_cache.PagedKVCache(1, 12, 3, 1, 2)
        self.model = {}          # seq_id -> list of token tags written
        self.next_id, self.next_tag = 0, 1

    @rule(n=st.integers(1, 7))
    def new_sequence(self, n):
        seq = f"s{self.next_id}"
        self.next_id += 1
        self._append(seq, n, new=True)

    @precondition(lambda self: self.model)
    @rule(data=st.data(), n=st.integers(1, 5))
    def extend(self, data, n):
        self._append(data.draw(st.sampled_from(sorted(self.model))), n)

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def fork(self, data):
        src = data.draw(st.sampled_from(sorted(self.model)))
        dst = f"s{self.next_id}"
        self.next_id += 1
        self.cache.fork(src, dst)
        self.model[dst] = list(self.model[src])

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def free(self, data):
        seq = data.draw(st.sampled_from(sorted(self.model)))
        self.cache.free(seq)
        del self.model[seq]

    def _append(self, seq, n, new=False):
        tags = list(range(self.next_tag, self.next_tag + n))
        free_before = self.cache.num_free_blocks
        try:
            slots = self.cache.allocate(seq, n)
        except MemoryError:
            assert self.cache.num_free_blocks == free_before, "a failed allocate took blocks"
            if new:
                assert seq not in self.model
            return
        self.next_tag += n
        if n:
            vals = torch.tensor(tags, dtype=torch.float32).view(n, 1, 1).expand(n, 1, 2).contiguous()
            self.cache.write(0, slots, vals, vals)
        self.model.setdefault(seq, []).extend(tags)

    @invariant()
    def every_sequence_holds_what_was_written(self):
        for seq, tags in self.model.items():
            table = self.cache.block_tables([seq])[0].tolist()
            assert int(self.cache.seq_lens([seq])[0]) == len(tags), f"{seq}: length differs from the tokens written"
            got = [float(self.cache.k_pages[0, table[t // 3], 0, t % 3, 0]) for t in range(len(tags))]
            assert got == [float(x) for x in tags], (
                f"{seq} reads {got} but wrote {tags}: a write leaked across sequences or a block was reused "
                f"while still held; {COW_HINT}")

    @invariant()
    def free_blocks_are_exactly_the_unused_ones(self):
        used = set()
        for seq, tags in self.model.items():
            table = self.cache.block_tables([seq])[0].tolist()
            held = table[:math.ceil(len(tags) / 3)]
            assert all(b >= 0 for b in held), f"{seq}: block table holds -1 inside its length"
            used.update(held)
        assert self.cache.num_free_blocks == 12 - len(used), (
            f"{12 - len(used)} blocks are unused but num_free_blocks is {self.cache.num_free_blocks}: a block was "
            f"leaked (never freed) or freed twice (reference counts)")


def test_allocator_invariants_under_random_operations(impl):
    machine = type("Machine", (CacheMachine,), {"impl": impl})
    machine.TestCase.settings = settings(max_examples=40, stateful_step_count=25, deadline=None, derandomize=True,
                                         database=None, suppress_health_check=list(HealthCheck))
    machine.TestCase().runTest()


# ---------------------------------------------------------- paged attention --

def contiguous_reference(q, k_pages, v_pages, tables, lens):
    """Gather each sequence's tokens one by one in Python, then float64 attention (GQA by repeat_interleave)."""
    S, H, D = q.shape
    _, Hkv, bs, _ = k_pages.shape
    out = torch.zeros(S, H, D, dtype=torch.float64)
    for s in range(S):
        n = int(lens[s])
        if n == 0:
            continue
        k = torch.stack([k_pages[int(tables[s, t // bs]), :, t % bs] for t in range(n)], dim=1)  # (Hkv, n, D)
        v = torch.stack([v_pages[int(tables[s, t // bs]), :, t % bs] for t in range(n)], dim=1)
        k, v = k.repeat_interleave(H // Hkv, 0), v.repeat_interleave(H // Hkv, 0)
        out[s] = attention_ref(q[s, :, None], k, v)[0][:, 0]
    return out


def random_layout(seed, num_seqs, block_size, num_blocks, max_len, share=False):
    gen = torch.Generator().manual_seed(seed)
    lens = torch.randint(0, max_len + 1, (num_seqs,), generator=gen)
    width = max(1, math.ceil(max_len / block_size))
    perm = torch.randperm(num_blocks, generator=gen).tolist()
    tables = torch.full((num_seqs, width), -1, dtype=torch.int32)
    for s in range(num_seqs):
        need = math.ceil(int(lens[s]) / block_size)
        for b in range(need):
            tables[s, b] = perm.pop()
    if share and num_seqs > 1 and int(lens[0]) >= 1:
        lens[1] = max(int(lens[1]), 1)
        tables[1, 0] = tables[0, 0]                  # sequence 1 reads sequence 0's first block (a shared prefix)
    return tables, lens.to(torch.int32)


@settings(max_examples=25, deadline=None, derandomize=True, database=None)
@given(seed=st.integers(0, 10_000), num_seqs=st.integers(1, 5), block_size=st.sampled_from([1, 2, 4, 5]),
       max_len=st.integers(1, 23), kv_heads=st.sampled_from([1, 2]), group=st.sampled_from([1, 3]),
       share=st.booleans())
def test_paged_attention_equals_contiguous_attention(impl, seed, num_seqs, block_size, max_len, kv_heads, group, share):
    num_blocks = num_seqs * math.ceil(max_len / block_size) + 2
    tables, lens = random_layout(seed, num_seqs, block_size, num_blocks, max_len, share)
    D, H = 4, kv_heads * group
    k_pages = randn(num_blocks, kv_heads, block_size, D, seed=seed + 1, dtype=torch.float64)
    v_pages = randn(num_blocks, kv_heads, block_size, D, seed=seed + 2, dtype=torch.float64)
    q = randn(num_seqs, H, D, seed=seed + 3, dtype=torch.float64)
    got = impl.paged_kv_cache.paged_attention(q, k_pages, v_pages, tables, lens)
    assert_close(got, contiguous_reference(q, k_pages, v_pages, tables, lens),
                 what=f"paged_attention (lengths {lens.tolist()}, block_size {block_size})",
                 hint=f"{SLOT_HINT}; only the first seq_lens[s] tokens exist (-1 entries are padding, never block 0); "
                      "query head h reads KV head h // (H // Hkv)")


def test_paged_attention_of_an_empty_sequence_is_zero(impl):
    k_pages = randn(3, 1, 2, 4, seed=1)
    q = randn(2, 2, 4, seed=2)
    tables = torch.tensor([[0, 1], [-1, -1]], dtype=torch.int32)
    out = impl.paged_kv_cache.paged_attention(q, k_pages, k_pages, tables, torch.tensor([3, 0], dtype=torch.int32))
    assert out.shape == (2, 2, 4)
    assert torch.equal(out[1], torch.zeros(2, 4)), f"a sequence of length 0 attends to nothing: output 0, got {out[1]}"


def test_paged_attention_reads_the_cache(impl):
    # End to end: write through the cache, read through paged_attention.
    cache = impl.paged_kv_cache.PagedKVCache(1, 10, 4, 2, 8, dtype=torch.float64)
    ids = ["a", "b", "c"]
    data = {}
    for seq, n in (("a", 9), ("b", 3), ("c", 4), ("a", 2), ("b", 6)):
        slots = cache.allocate(seq, n)
        k, v = randn(n, 2, 8, seed=len(data) * 7 + n, dtype=torch.float64), randn(n, 2, 8, seed=n, dtype=torch.float64)
        cache.write(0, slots, k, v)
        old = data.get(seq, (torch.zeros(0, 2, 8, dtype=torch.float64),) * 2)
        data[seq] = (torch.cat([old[0], k]), torch.cat([old[1], v]))
    q = randn(3, 4, 8, seed=99, dtype=torch.float64)
    got = impl.paged_kv_cache.paged_attention(q, cache.k_pages[0], cache.v_pages[0], cache.block_tables(ids),
                                              cache.seq_lens(ids))
    for s, seq in enumerate(ids):
        k, v = data[seq]
        k, v = k.transpose(0, 1).repeat_interleave(2, 0), v.transpose(0, 1).repeat_interleave(2, 0)
        assert_close(got[s], attention_ref(q[s, :, None], k, v)[0][:, 0], what=f"paged_attention, sequence {seq!r}")


# ---------------------------------------------------------------- bad input --

def test_rejects_bad_input(impl):
    pk = impl.paged_kv_cache
    assert_rejects(lambda: pk.PagedKVCache(1, 0, 4, 1, 2), "num_blocks")
    assert_rejects(lambda: pk.PagedKVCache(1, 4, 0, 1, 2), "block_size")
    cache = pk.PagedKVCache(1, 4, 2, 1, 2)
    assert_rejects(lambda: cache.allocate("a", -1), "num_tokens")
    assert_rejects(lambda: cache.fork("missing", "b"), "missing", "src")
    assert_rejects(lambda: cache.free("missing"), "missing", "seq")
    cache.allocate("a", 1)
    assert_rejects(lambda: cache.fork("a", "a"), "a", "dst")
    k_pages = torch.zeros(3, 2, 2, 4)
    q = torch.zeros(2, 3, 4)  # 3 heads over 2 KV heads
    tables, lens = torch.zeros(2, 1, dtype=torch.int32), torch.ones(2, dtype=torch.int32)
    assert_rejects(lambda: pk.paged_attention(q, k_pages, k_pages, tables, lens), "head", "q", "k_pages")
    q = torch.zeros(2, 2, 4)
    assert_rejects(lambda: pk.paged_attention(q, k_pages, k_pages, tables, torch.tensor([1, 3])), "seq_lens")
    assert_rejects(lambda: pk.paged_attention(q, k_pages, k_pages, tables.float(), lens), "block_tables")
    assert_rejects(lambda: pk.paged_attention(q, k_pages, k_pages, torch.full((2, 1), 7), lens), "block")


# ------------------------------------------------------------------ engine --

def tiny_model(impl, dtype=torch.float64, num_kv_heads=2, seed=0):
    dec = impl.decoder
    torch.manual_seed(seed)
    config = dec.DecoderConfig(vocab_size=61, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4,
                               num_kv_heads=num_kv_heads)
    return dec.Decoder(config).to(dtype).eval()


def prompts_and_lengths(seed=1):
    gen = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(0, 61, (n,), generator=gen) for n in (5, 1, 12, 7, 3, 9)]
    return prompts, [6, 9, 3, 0, 12, 5]


def alone(impl, model, prompt, n):
    return impl.decoder.generate(model, prompt[None], n)[0]


@pytest.mark.parametrize("num_blocks, max_batch", [(64, 4), (64, 1), (6, 3)],
                         ids=["roomy", "one_at_a_time", "tight_pool"])
def test_engine_equals_generating_each_request_alone(impl, num_blocks, max_batch):
    model = tiny_model(impl)
    prompts, news = prompts_and_lengths()
    cache = impl.paged_kv_cache.PagedKVCache(2, num_blocks, 4, 2, 8, dtype=torch.float64)
    engine = impl.serving.Engine(model, cache, max_batch_size=max_batch)
    ids = [engine.add_request(p, n) for p, n in zip(prompts[:3], news[:3])]
    for _ in range(4):                                   # three requests are under way when the rest arrive
        engine.step()
    ids += [engine.add_request(p, n) for p, n in zip(prompts[3:], news[3:])]
    out = engine.run()
    assert sorted(out) == sorted(ids), f"run() must return every request id once, got {sorted(out)} for {sorted(ids)}"
    for rid, prompt, n in zip(ids, prompts, news):
        want = alone(impl, model, prompt, n)
        got = out[rid]
        assert torch.equal(got.cpu(), want.cpu()), (
            f"request {rid} (prompt {len(prompt)} tokens, {n} new, pool {num_blocks} blocks, batch {max_batch}): "
            f"engine gave {got.tolist()}, generate alone gives {want.tolist()}; each sequence decodes at its OWN "
            f"position (its length so far), writes its key/value before attending, and reads only its own blocks")
    assert cache.num_free_blocks == num_blocks, (
        f"after every request finished {num_blocks - cache.num_free_blocks} blocks are still taken: a finished (or "
        f"preempted) request must free its blocks")


def test_engine_float32_gqa_and_mqa(impl):
    for kv_heads in (2, 1):
        model = tiny_model(impl, dtype=torch.float32, num_kv_heads=kv_heads, seed=3)
        prompts, news = prompts_and_lengths(seed=4)
        cache = impl.paged_kv_cache.PagedKVCache(2, 40, 3, kv_heads, 8)
        engine = impl.serving.Engine(model, cache, max_batch_size=6)
        ids = [engine.add_request(p, n) for p, n in zip(prompts, news)]
        out = engine.run()
        for rid, prompt, n in zip(ids, prompts, news):
            assert torch.equal(out[rid].cpu(), alone(impl, model, prompt, n).cpu()), (
                f"Hkv = {kv_heads}: request {rid} differs from generate alone")


def test_a_finished_request_frees_its_blocks_at_once(impl):
    model = tiny_model(impl)
    cache = impl.paged_kv_cache.PagedKVCache(2, 32, 4, 2, 8, dtype=torch.float64)
    engine = impl.serving.Engine(model, cache, max_batch_size=4)
    short = engine.add_request(list(range(1, 9)), 2)      # 8-token prompt, 2 new tokens
    long = engine.add_request([3, 4, 5, 6], 30)
    for _ in range(12):                                  # enough for short to finish, long to go on
        engine.step()
    held = math.ceil(int(cache.seq_lens([long])[0]) / 4)
    assert cache.num_free_blocks == 32 - held, (
        f"the short request finished, but {32 - held - cache.num_free_blocks} of its blocks are still taken: "
        f"continuous batching frees a request's blocks the moment it finishes")
    out = engine.run()
    assert torch.equal(out[long].cpu(), alone(impl, model, torch.tensor([3, 4, 5, 6]), 30).cpu())


def test_engine_rejects_bad_input(impl):
    model = tiny_model(impl)
    sv, pk = impl.serving, impl.paged_kv_cache
    assert_rejects(lambda: sv.Engine(model, pk.PagedKVCache(2, 8, 4, 3, 8), 2), "cache", "num_kv_heads", "head")
    assert_rejects(lambda: sv.Engine(model, pk.PagedKVCache(2, 8, 4, 2, 8), 0), "max_batch_size")
    engine = sv.Engine(model, pk.PagedKVCache(2, 8, 4, 2, 8, dtype=torch.float64), 2)
    assert_rejects(lambda: engine.add_request([], 3), "prompt")
    assert_rejects(lambda: engine.add_request([1, 2], -1), "max_new_tokens")
    assert_rejects(lambda: engine.add_request(list(range(30)), 10), "block", "token", "request")


# ===========================================================================
# Part 2: the Triton kernel (paged_attention_triton). On a CUDA machine it runs
# on the GPU; without one, on CPU tensors under TRITON_INTERPRET=1 (the plugin
# sets it), where every program runs in Python: shapes stay small. Every slot of
# the pool that holds no token of a sequence is NaN, so a kernel that reads one
# (a -1 entry taken as block 0, a slot past seq_len, another block's data) gives
# NaN or a wrong value instead of passing by luck.
# ===========================================================================
PAGED_HINT = ("token t of sequence s is row t % block_size of block block_tables[s, t // block_size]; only "
              "t < seq_lens[s] exists: mask the table load and the K/V loads with it")
GQA_TRITON_HINT = "the G = H // Hkv rows of a tile are query heads hkv * G .. hkv * G + G - 1 (repeat_interleave)"


def poisoned_layout(seed, lens, block_size, kv_heads, head_dim, *, shared_blocks=0, spare=3, dtype=torch.float32,
                    device="cpu"):
    """Pages and tables for sequences of `lens` tokens, their blocks scattered over the pool by a random
    permutation that never hands out block 0 (so a -1 entry read as block 0 reads NaN), the first
    `shared_blocks` blocks of sequence 0 shared by every other sequence at least as long (a common
    prefix). Every slot that is no sequence's token is NaN. Returns k_pages, v_pages, tables, seq_lens."""
    gen = torch.Generator().manual_seed(seed)
    width = max(1, max(math.ceil(n / block_size) for n in lens))
    num_blocks = len(lens) * width + spare
    free = (torch.randperm(num_blocks - 1, generator=gen) + 1).tolist()   # 1..num_blocks-1: block 0 stays unused
    tables = torch.full((len(lens), width), -1, dtype=torch.int32)
    for s, n in enumerate(lens):
        for j in range(math.ceil(n / block_size)):
            full_prefix = (j + 1) * block_size <= lens[0]
            if s > 0 and j < shared_blocks and full_prefix:
                tables[s, j] = tables[0, j]                  # a full block of the shared prefix
            else:
                tables[s, j] = free.pop()
    k_pages = torch.full((num_blocks, kv_heads, block_size, head_dim), float("nan"))
    v_pages = torch.full((num_blocks, kv_heads, block_size, head_dim), float("nan"))
    values = randn(2, num_blocks, kv_heads, block_size, head_dim, seed=seed + 1)
    for s, n in enumerate(lens):
        for t in range(n):
            b, o = int(tables[s, t // block_size]), t % block_size
            k_pages[b, :, o], v_pages[b, :, o] = values[0, b, :, o], values[1, b, :, o]
    to = dict(dtype=dtype, device=device)
    return k_pages.to(**to), v_pages.to(**to), tables.to(device), torch.tensor(lens, dtype=torch.int32).to(device)


def gathered_reference(q, k_pages, v_pages, tables, lens, scale=None):
    """Gather each sequence's keys through its table with torch indexing, then float64 SDPA (enable_gqa)."""
    q, k_pages, v_pages = (x.detach().cpu().double() for x in (q, k_pages, v_pages))
    tables, lens = tables.cpu().long(), lens.cpu().long()
    S, H, D = q.shape
    bs = k_pages.shape[2]
    out = torch.zeros(S, H, D, dtype=torch.float64)
    for s in range(S):
        t = torch.arange(int(lens[s]))
        if t.numel() == 0:
            continue                                            # nothing to attend to: zeros
        k = k_pages[tables[s, t // bs], :, t % bs].transpose(0, 1)   # (n, Hkv, D) -> (Hkv, n, D)
        v = v_pages[tables[s, t // bs], :, t % bs].transpose(0, 1)
        out[s] = torch.nn.functional.scaled_dot_product_attention(q[s, :, None], k, v, scale=scale,
                                                                  enable_gqa=True)[:, 0]
    return out


TRITON_CASES = {
    # name: (block_size, H, Hkv, lens, shared_blocks); D = 16 (the smallest tl.dot)
    "bs16_mha_ragged": (16, 2, 2, [37, 16, 1, 0], 0),
    "bs4_gqa_ends_inside_blocks": (4, 4, 2, [13, 7, 22], 0),
    "bs5_mqa_odd_block": (5, 4, 1, [23, 5, 11], 0),
    "bs32_gqa_tile_inside_block": (32, 8, 2, [70, 33], 0),
    "bs1_one_token_blocks": (1, 2, 1, [9, 3], 0),
    "bs4_shared_prefix": (4, 4, 2, [18, 14, 9, 1], 3),
}


@pytest.mark.triton
@pytest.mark.parametrize("case", TRITON_CASES, ids=list(TRITON_CASES))
def test_triton_paged_matches_gathered_sdpa(impl, triton_device, case):
    bs, H, Hkv, lens, shared = TRITON_CASES[case]
    k_pages, v_pages, tables, seq_lens = poisoned_layout(10, lens, bs, Hkv, 16, shared_blocks=shared,
                                                         device=triton_device)
    q = randn(len(lens), H, 16, seed=11, device=triton_device)
    out = impl.paged_attention_triton.triton_paged_attention(q, k_pages, v_pages, tables, seq_lens)
    hints = [PAGED_HINT]
    if H != Hkv:
        hints.append(GQA_TRITON_HINT)
    assert_close(out, gathered_reference(q, k_pages, v_pages, tables, seq_lens), dtype=torch.float32,
                 what=f"triton_paged_attention ({case}: block_size {bs}, lengths {lens})",
                 hint="NaN means a slot that holds no token was read (a -1 entry used as block 0, or a slot past "
                      "seq_len); " + "; ".join(hints))
    assert out.shape == q.shape and out.dtype == q.dtype, f"out must be {tuple(q.shape)} {q.dtype}"


@pytest.mark.triton
def test_triton_paged_empty_sequences_give_zeros(impl, triton_device):
    k_pages, v_pages, tables, seq_lens = poisoned_layout(12, [0, 6, 0], 4, 2, 16, device=triton_device)
    q = randn(3, 4, 16, seed=13, device=triton_device)
    out = impl.paged_attention_triton.triton_paged_attention(q, k_pages, v_pages, tables, seq_lens)
    assert_close(out[[0, 2]], torch.zeros(2, 4, 16), what="sequences of length 0",
                 hint="no token: out 0, never NaN (guard m_i = -inf and l_i = 0, as L10's kernel does)")
    assert_close(out[1], gathered_reference(q, k_pages, v_pages, tables, seq_lens)[1], dtype=torch.float32,
                 what="the sequence of length 6 between two empty ones")


@pytest.mark.triton
def test_triton_paged_reads_the_cache_after_fork(impl, triton_device):
    # End to end: PagedKVCache writes (with a fork and copy-on-write), the kernel reads layer 1's pages
    cache = impl.paged_kv_cache.PagedKVCache(2, 12, 4, 2, 16, device=triton_device)
    for seq, n in (("a", 10), ("b", 3)):
        slots = cache.allocate(seq, n)
        for layer in (0, 1):
            cache.write(layer, slots, randn(n, 2, 16, seed=20 + n + layer, device=triton_device),
                        randn(n, 2, 16, seed=40 + n + layer, device=triton_device))
    cache.fork("a", "c")                                      # c shares a's 3 blocks, the last one partly filled
    slots = cache.allocate("c", 3)                            # copy-on-write of block 3, then a new block
    for layer in (0, 1):
        cache.write(layer, slots, randn(3, 2, 16, seed=60 + layer, device=triton_device),
                    randn(3, 2, 16, seed=70 + layer, device=triton_device))
    ids = ["a", "b", "c"]
    q = randn(3, 4, 16, seed=80, device=triton_device)
    tables, lens = cache.block_tables(ids), cache.seq_lens(ids)
    out = impl.paged_attention_triton.triton_paged_attention(q, cache.k_pages[1], cache.v_pages[1], tables, lens)
    assert_close(out, gathered_reference(q, cache.k_pages[1], cache.v_pages[1], tables, lens), dtype=torch.float32,
                 what="triton_paged_attention over a PagedKVCache's layer 1 (sequences a, b, and c forked from a)",
                 hint=PAGED_HINT + "; k_pages is one layer's pages, (num_blocks, Hkv, block_size, D)")


@pytest.mark.triton
def test_triton_paged_half_precision_within_eager_error(impl, triton_device):
    lens, bs, Hkv, G = [40, 23, 9], 8, 2, 2
    k_pages, v_pages, tables, seq_lens = poisoned_layout(14, lens, bs, Hkv, 16, dtype=torch.float16,
                                                         device=triton_device)
    q = randn(3, Hkv * G, 16, seed=15, dtype=torch.float16, device=triton_device)
    out = impl.paged_attention_triton.triton_paged_attention(q, k_pages, v_pages, tables, seq_lens)
    assert out.dtype == torch.float16, f"out must keep the input dtype float16, got {out.dtype}"
    expected = gathered_reference(q, k_pages, v_pages, tables, seq_lens)
    eager = torch.zeros(3, Hkv * G, 16, dtype=torch.float16)   # the same gather, attention by plain float16 ops
    for s, n in enumerate(lens):
        t = torch.arange(n)
        k = k_pages.cpu()[tables.cpu().long()[s, t // bs], :, t % bs].transpose(0, 1).repeat_interleave(G, 0)
        v = v_pages.cpu()[tables.cpu().long()[s, t // bs], :, t % bs].transpose(0, 1).repeat_interleave(G, 0)
        w = torch.softmax((q[s].cpu()[:, None] @ k.transpose(-2, -1)) / 4.0, dim=-1)   # 1/sqrt(16)
        eager[s] = (w @ v)[:, 0]
    assert_within_eager_error(out, expected, eager, what="triton_paged_attention float16",
                              hint="scores, the running statistics, the partials and the merge belong in float32")


@pytest.mark.triton
def test_triton_paged_rejects_bad_input(impl, triton_device):
    pat = impl.paged_attention_triton
    k_pages, v_pages, tables, lens = poisoned_layout(16, [5, 3], 4, 2, 16, device=triton_device)
    k_pages, v_pages = k_pages.nan_to_num(0.0), v_pages.nan_to_num(0.0)
    q = randn(2, 4, 16, seed=17, device=triton_device)
    out = pat.triton_paged_attention(q, k_pages, v_pages, tables, lens)   # a valid call first
    assert_close(out, gathered_reference(q, k_pages, v_pages, tables, lens), dtype=torch.float32,
                 what="triton_paged_attention of the valid call")
    on = dict(device=triton_device)
    assert_rejects(lambda: pat.triton_paged_attention(q[:, None], k_pages, v_pages, tables, lens), "q")
    assert_rejects(lambda: pat.triton_paged_attention(randn(2, 3, 16, **on), k_pages, v_pages, tables, lens),
                   "head", "q", "k_pages")
    assert_rejects(lambda: pat.triton_paged_attention(q, k_pages, v_pages[..., :8], tables, lens), "v_pages", "v")
    assert_rejects(lambda: pat.triton_paged_attention(q.double(), k_pages.double(), v_pages.double(), tables, lens),
                   "float64", "dtype")
    assert_rejects(lambda: pat.triton_paged_attention(q, k_pages, v_pages, tables,
                                                      torch.tensor([5, 30], dtype=torch.int32, **on)), "seq_lens")
    assert_rejects(lambda: pat.triton_paged_attention(q, k_pages, v_pages, tables, lens.float()), "seq_lens")
    assert_rejects(lambda: pat.triton_paged_attention(q, k_pages, v_pages, tables.float(), lens), "block_tables")
    wrong = tables.clone()
    wrong[0, 1] = k_pages.shape[0] + 4                        # a block past the pool, inside sequence 0's length
    assert_rejects(lambda: pat.triton_paged_attention(q, k_pages, v_pages, wrong, lens), "block_tables", "block")
    wrong[0, 1] = -1                                          # padding where sequence 0 still has tokens
    assert_rejects(lambda: pat.triton_paged_attention(q, k_pages, v_pages, wrong, lens), "block_tables", "block")
