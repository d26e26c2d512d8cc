"""The selective scan as Triton kernels, forward and backward (Mamba's fused scan, arXiv 2312.00752 sec. 3.3).

One program per (batch, block of ``BLOCK_D`` channels) walks the sequence in chunks of ``CHUNK``
positions. For a chunk it loads u, delta, z (CHUNK, BLOCK_D) and B, C (CHUNK, N) of the block's
group, forms ``exp(delta A)`` and ``delta B u`` (CHUNK, BLOCK_D, N) in registers, and runs the
recurrence over the chunk as an associative scan of the pairs ``(a, b)``; the state (BLOCK_D, N)
stays in registers from chunk to chunk, and nothing of size (B, L, D, N) ever reaches memory.
Arithmetic is in float32 (float64 for float64 inputs) whatever the inputs' dtype.

The forward pass stores the state entering every chunk, (B, L / CHUNK, D, N). The backward pass walks
the chunks from last to first: it recomputes the chunk's states from the stored one, runs the adjoint
recurrence ``g_t = C_t dy_t + exp(delta_{t+1} A) g_{t+1}`` as a reverse associative scan, and forms
every gradient from it; the gradient reaching the state before the chunk is carried in registers.
Gradients shared by the channels of a group (B, C) or by the batch (A, D, delta_bias) are written as
one partial sum per program and summed in torch, so the result does not depend on scheduling.

A block of channels never straddles two groups of B and C: ``BLOCK_D`` is a power of two dividing
``D / G`` (at most 32, and smaller for N above 16), so a block reads one (CHUNK, N) tile of B and of C
per chunk. The block sizes and warp counts are set by rule and not yet timed on a GPU; compiled for
sm_90 (bf16 inputs, N=16, BLOCK_D=32, 8 warps) ptxas gives the forward kernel 128 registers and the
backward 255, neither spilling (at N=128 the backward spills).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ssmlab.ops.selective_scan.reference import compute_dtype

CHUNK = 16
MAX_BLOCK_D = 32


@triton.jit
def _combine(a1, b1, a2, b2):
    # (a1, b1) then (a2, b2): h -> a2 (a1 h + b1) + b2.
    return a1 * a2, b1 * a2 + b2


@triton.jit
def _step_size(raw, bias, SOFTPLUS: tl.constexpr):
    pre = raw + bias
    if SOFTPLUS:
        # torch's softplus with threshold 20; exp(pre) below -15, where 1 + exp(pre) rounds to 1.
        soft = tl.where(pre > 20.0, pre, tl.log(1.0 + tl.exp(tl.minimum(pre, 20.0))))
        return pre, tl.where(pre < -15.0, tl.exp(pre), soft)
    return pre, pre


@triton.jit
def _fwd_kernel(u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, h0_ptr,
                y_ptr, hT_ptr, saved_ptr,
                L, DIM, N, CH_PER_GROUP, n_chunks,
                HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_H0: tl.constexpr,
                SOFTPLUS: tl.constexpr, SAVE: tl.constexpr, ACC: tl.constexpr,
                CHUNK: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_b = tl.program_id(0).to(tl.int64)  # offsets past 2^31 elements at large B L D
    pid_d = tl.program_id(1)
    G = DIM // CH_PER_GROUP
    group = pid_d * BLOCK_D // CH_PER_GROUP
    d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)  # (BLOCK_D,)
    n = tl.arange(0, BLOCK_N)  # (BLOCK_N,)
    t = tl.arange(0, CHUNK)  # (CHUNK,)
    d_ok = d < DIM
    n_ok = n < N
    dn_ok = d_ok[:, None] & n_ok[None, :]
    A = tl.load(A_ptr + d[:, None] * N + n[None, :], mask=dn_ok, other=0.0).to(ACC)  # (BLOCK_D, BLOCK_N)
    if HAS_D:
        Dv = tl.load(D_ptr + d, mask=d_ok, other=0.0).to(ACC)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + d, mask=d_ok, other=0.0).to(ACC)
    else:
        bias = tl.zeros([BLOCK_D], dtype=ACC)
    # The batch's offsets once, as 64-bit scalars; the offsets within a batch are 32-bit tiles.
    u_ptr += pid_b * L * DIM
    delta_ptr += pid_b * L * DIM
    y_ptr += pid_b * L * DIM
    if HAS_Z:
        z_ptr += pid_b * L * DIM
    B_ptr += pid_b * L * G * N + group * N
    C_ptr += pid_b * L * G * N + group * N
    saved_ptr += pid_b * n_chunks * DIM * N
    state_off = pid_b * DIM * N + d[:, None] * N + n[None, :]  # (BLOCK_D, BLOCK_N)
    if HAS_H0:
        h = tl.load(h0_ptr + state_off, mask=dn_ok, other=0.0).to(ACC)
    else:
        h = tl.zeros([BLOCK_D, BLOCK_N], dtype=ACC)
    for c in range(n_chunks):
        if SAVE:
            tl.store(saved_ptr + c * DIM * N + d[:, None] * N + n[None, :], h, mask=dn_ok)
        pos = c * CHUNK + t
        pos_ok = pos < L
        td_ok = pos_ok[:, None] & d_ok[None, :]
        tn_ok = pos_ok[:, None] & n_ok[None, :]
        td = pos[:, None] * DIM + d[None, :]  # (CHUNK, BLOCK_D)
        u = tl.load(u_ptr + td, mask=td_ok, other=0.0).to(ACC)
        raw = tl.load(delta_ptr + td, mask=td_ok, other=0.0).to(ACC)
        _, dt = _step_size(raw, bias[None, :], SOFTPLUS)
        dt = tl.where(td_ok, dt, 0.0)
        tn = pos[:, None] * G * N + n[None, :]  # (CHUNK, BLOCK_N)
        Bm = tl.load(B_ptr + tn, mask=tn_ok, other=0.0).to(ACC)
        Cm = tl.load(C_ptr + tn, mask=tn_ok, other=0.0).to(ACC)
        a = tl.exp(dt[:, :, None] * A[None, :, :])  # (CHUNK, BLOCK_D, BLOCK_N)
        b = (dt * u)[:, :, None] * Bm[:, None, :]
        acc_a, acc_b = tl.associative_scan((a, b), 0, _combine)
        states = acc_b + acc_a * h[None, :, :]  # the state after each position of the chunk
        out = tl.sum(states * Cm[:, None, :], axis=2)  # (CHUNK, BLOCK_D)
        if HAS_D:
            out += Dv[None, :] * u
        if HAS_Z:
            zz = tl.load(z_ptr + td, mask=td_ok, other=0.0).to(ACC)
            out = out * zz * tl.sigmoid(zz)
        tl.store(y_ptr + td, out.to(y_ptr.dtype.element_ty), mask=td_ok)
        h = tl.sum(tl.where((t == CHUNK - 1)[:, None, None], states, 0.0), axis=0)
    tl.store(hT_ptr + state_off, h, mask=dn_ok)


@triton.jit
def _bwd_kernel(u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, saved_ptr, dy_ptr, dhT_ptr,
                du_ptr, ddelta_ptr, dz_ptr, dB_ptr, dC_ptr, dA_ptr, dD_ptr, dbias_ptr, dh0_ptr,
                L, DIM, N, CH_PER_GROUP, n_chunks,
                HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_DHT: tl.constexpr,
                HAS_DY: tl.constexpr, SOFTPLUS: tl.constexpr, ACC: tl.constexpr,
                CHUNK: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_b = tl.program_id(0).to(tl.int64)  # offsets past 2^31 elements at large B L D
    pid_d = tl.program_id(1)
    n_blocks = tl.num_programs(1)
    G = DIM // CH_PER_GROUP
    group = pid_d * BLOCK_D // CH_PER_GROUP
    d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    n = tl.arange(0, BLOCK_N)
    t = tl.arange(0, CHUNK)
    d_ok = d < DIM
    n_ok = n < N
    dn_ok = d_ok[:, None] & n_ok[None, :]
    A = tl.load(A_ptr + d[:, None] * N + n[None, :], mask=dn_ok, other=0.0).to(ACC)
    if HAS_D:
        Dv = tl.load(D_ptr + d, mask=d_ok, other=0.0).to(ACC)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + d, mask=d_ok, other=0.0).to(ACC)
    else:
        bias = tl.zeros([BLOCK_D], dtype=ACC)
    state_off = pid_b * DIM * N + d[:, None] * N + n[None, :]
    if HAS_DHT:
        carry = tl.load(dhT_ptr + state_off, mask=dn_ok, other=0.0).to(ACC)  # dloss / d(state after the chunk)
    else:
        carry = tl.zeros([BLOCK_D, BLOCK_N], dtype=ACC)
    grad_A = tl.zeros([BLOCK_D, BLOCK_N], dtype=ACC)
    grad_D = tl.zeros([BLOCK_D], dtype=ACC)
    grad_bias = tl.zeros([BLOCK_D], dtype=ACC)
    u_ptr += pid_b * L * DIM
    delta_ptr += pid_b * L * DIM
    du_ptr += pid_b * L * DIM
    ddelta_ptr += pid_b * L * DIM
    if HAS_DY:
        dy_ptr += pid_b * L * DIM
    if HAS_Z:
        z_ptr += pid_b * L * DIM
        dz_ptr += pid_b * L * DIM
    B_ptr += pid_b * L * G * N + group * N
    C_ptr += pid_b * L * G * N + group * N
    saved_ptr += pid_b * n_chunks * DIM * N
    part = pid_b * L * n_blocks * N + pid_d * N  # (B, L, D / BLOCK_D, N) partial sums of dB, dC
    dB_ptr += part
    dC_ptr += part
    last = (t == CHUNK - 1)[:, None, None]
    for i in range(n_chunks):
        c = n_chunks - 1 - i
        pos = c * CHUNK + t
        pos_ok = pos < L
        nxt_ok = (pos + 1) < L
        td_ok = pos_ok[:, None] & d_ok[None, :]
        tn_ok = pos_ok[:, None] & n_ok[None, :]
        td = pos[:, None] * DIM + d[None, :]
        u = tl.load(u_ptr + td, mask=td_ok, other=0.0).to(ACC)
        raw = tl.load(delta_ptr + td, mask=td_ok, other=0.0).to(ACC)
        pre, dt = _step_size(raw, bias[None, :], SOFTPLUS)
        dt = tl.where(td_ok, dt, 0.0)
        raw_next = tl.load(delta_ptr + td + DIM, mask=nxt_ok[:, None] & d_ok[None, :], other=0.0).to(ACC)
        _, dt_next = _step_size(raw_next, bias[None, :], SOFTPLUS)
        dt_next = tl.where(nxt_ok[:, None] & d_ok[None, :], dt_next, 0.0)
        tn = pos[:, None] * G * N + n[None, :]
        Bm = tl.load(B_ptr + tn, mask=tn_ok, other=0.0).to(ACC)
        Cm = tl.load(C_ptr + tn, mask=tn_ok, other=0.0).to(ACC)
        h_in = tl.load(saved_ptr + c * DIM * N + d[:, None] * N + n[None, :],
                       mask=dn_ok, other=0.0).to(ACC)
        a = tl.exp(dt[:, :, None] * A[None, :, :])  # (CHUNK, BLOCK_D, BLOCK_N)
        bu = (dt * u)[:, :, None] * Bm[:, None, :]  # delta B u
        acc_a, acc_b = tl.associative_scan((a, bu), 0, _combine)
        states = acc_b + acc_a * h_in[None, :, :]

        if HAS_DY:
            dy = tl.load(dy_ptr + td, mask=td_ok, other=0.0).to(ACC)
        else:
            dy = tl.zeros([CHUNK, BLOCK_D], dtype=ACC)
        if HAS_Z:
            zz = tl.load(z_ptr + td, mask=td_ok, other=0.0).to(ACC)
            ungated = tl.sum(states * Cm[:, None, :], axis=2)
            if HAS_D:
                ungated += Dv[None, :] * u
            sig = tl.sigmoid(zz)
            dz = dy * ungated * sig * (1.0 + zz * (1.0 - sig))
            tl.store(dz_ptr + td, dz.to(dz_ptr.dtype.element_ty), mask=td_ok)
            dy = dy * zz * sig
        if HAS_D:
            grad_D += tl.sum(dy * u, axis=0)
            du = dy * Dv[None, :]
        else:
            du = tl.zeros([CHUNK, BLOCK_D], dtype=ACC)
        ptn = pos[:, None] * n_blocks * N + n[None, :]
        tl.store(dC_ptr + ptn, tl.sum(states * dy[:, :, None], axis=1), mask=tn_ok)

        # Adjoint: g_t = C_t dy_t + a_{t+1} g_{t+1}, with the carry entering the chunk's last row.
        x = dy[:, :, None] * Cm[:, None, :] + tl.where(last, carry[None, :, :], 0.0)
        a_next = tl.where(last, 1.0, tl.exp(dt_next[:, :, None] * A[None, :, :]))
        _, g = tl.associative_scan((a_next, x), 0, _combine, reverse=True)
        carry = tl.sum(tl.where((t == 0)[:, None, None], a * g, 0.0), axis=0)

        grad_bu = tl.sum(g * Bm[:, None, :], axis=2)  # (CHUNK, BLOCK_D)
        tl.store(dB_ptr + ptn, tl.sum(g * (dt * u)[:, :, None], axis=1), mask=tn_ok)
        du += grad_bu * dt
        # exp(delta_t A) h_{t-1} = h_t - delta_t B_t u_t: no shift of the states needed.
        through_a = g * (states - bu)
        grad_dt = grad_bu * u + tl.sum(through_a * A[None, :, :], axis=2)
        grad_A += tl.sum(through_a * dt[:, :, None], axis=0)
        if SOFTPLUS:
            grad_pre = tl.where(pre > 20.0, grad_dt, grad_dt * tl.sigmoid(pre))
        else:
            grad_pre = grad_dt
        grad_pre = tl.where(td_ok, grad_pre, 0.0)
        grad_bias += tl.sum(grad_pre, axis=0)
        tl.store(du_ptr + td, du.to(du_ptr.dtype.element_ty), mask=td_ok)
        tl.store(ddelta_ptr + td, grad_pre.to(ddelta_ptr.dtype.element_ty), mask=td_ok)
    tl.store(dh0_ptr + state_off, carry, mask=dn_ok)
    tl.store(dA_ptr + state_off, grad_A, mask=dn_ok)  # (B, D, N) per-batch partial sums
    tl.store(dD_ptr + pid_b * DIM + d, grad_D, mask=d_ok)
    tl.store(dbias_ptr + pid_b * DIM + d, grad_bias, mask=d_ok)


def _num_warps(block_d: int, block_n: int) -> int:
    """Eight warps once a chunk's (CHUNK, BLOCK_D, N) tiles hold 8192 numbers (N=16 and up), so that the
    handful of them live at once fit in registers; four below."""
    return 8 if CHUNK * block_d * block_n >= 8192 else 4


def _block_d(channels_per_group: int, block_n: int) -> int:
    """The largest power of two dividing D / G (a block of channels reads one group), at most MAX_BLOCK_D
    and at most what keeps a chunk's (CHUNK, BLOCK_D, N) tiles to 8192 numbers."""
    return min(MAX_BLOCK_D, channels_per_group & -channels_per_group, max(1, 8192 // (CHUNK * block_n)))


def _tl_dtype(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _as_groups(m: torch.Tensor) -> torch.Tensor:
    return (m[:, :, None] if m.dim() == 3 else m).contiguous()  # (B, L, G, N)


def _contiguous(t):
    return None if t is None else t.contiguous()


class _SelectiveScanTriton(torch.autograd.Function):

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus, keep):
        dtype = compute_dtype(u.dtype)
        batch, length, channels = u.shape
        n_state = A.shape[1]
        Bg, Cg = _as_groups(B), _as_groups(C)
        per_group = channels // Bg.shape[2]
        if Cg.shape[2] != Bg.shape[2]:
            raise ValueError("the triton selective scan needs the same number of groups for B and C")
        u_, delta_, z_ = u.contiguous(), delta.contiguous(), _contiguous(z)
        A_ = A.to(dtype).contiguous()
        D_ = None if D is None else D.to(dtype).contiguous()
        bias_ = None if delta_bias is None else delta_bias.to(dtype).contiguous()
        h0 = None if initial_state is None else initial_state.to(dtype).contiguous()
        block_n = triton.next_power_of_2(n_state)
        block_d = _block_d(per_group, block_n)
        n_chunks = triton.cdiv(length, CHUNK)
        y = torch.empty_like(u_)
        final = u.new_empty(batch, channels, n_state, dtype=dtype)
        saved = u.new_empty(batch, n_chunks, channels, n_state, dtype=dtype) if keep else final
        grid = (batch, channels // block_d)
        _fwd_kernel[grid](u_, delta_, A_, Bg, Cg, D_, z_, bias_, h0, y, final, saved,
                          length, channels, n_state, per_group, n_chunks,
                          HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
                          HAS_H0=h0 is not None, SOFTPLUS=delta_softplus, SAVE=keep, ACC=_tl_dtype(dtype),
                          CHUNK=CHUNK, BLOCK_D=block_d, BLOCK_N=block_n, num_warps=_num_warps(block_d, block_n))
        ctx.set_materialize_grads(False)
        ctx.options = (delta_softplus, B.dim() == 3, C.dim() == 3, block_d, n_chunks)
        ctx.save_for_backward(u_, delta_, A_, Bg, Cg, D_, z_, bias_, saved if keep else None)
        ctx.originals = (A.dtype, B.dtype, C.dtype, None if D is None else D.dtype,
                         None if delta_bias is None else delta_bias.dtype,
                         None if initial_state is None else initial_state.dtype)
        return y, final

    @staticmethod
    def backward(ctx, grad_y, grad_state):
        u, delta, A, Bg, Cg, D, z, bias, saved = ctx.saved_tensors
        delta_softplus, b_flat, c_flat, block_d, n_chunks = ctx.options
        A_dtype, B_dtype, C_dtype, D_dtype, bias_dtype, h0_dtype = ctx.originals
        dtype = compute_dtype(u.dtype)
        batch, length, channels = u.shape
        n_state = A.shape[1]
        groups = Bg.shape[2]
        n_blocks, block_n = channels // block_d, triton.next_power_of_2(n_state)
        grad_u, grad_delta = torch.empty_like(u), torch.empty_like(delta)
        grad_z = None if z is None else torch.empty_like(z)
        new = lambda *shape: u.new_empty(*shape, dtype=dtype)  # noqa: E731
        part_B, part_C = new(batch, length, n_blocks, n_state), new(batch, length, n_blocks, n_state)
        part_A, grad_h0 = new(batch, channels, n_state), new(batch, channels, n_state)
        part_D, part_bias = new(batch, channels), new(batch, channels)
        dy = None if grad_y is None else grad_y.contiguous()
        dhT = None if grad_state is None else grad_state.contiguous()
        _bwd_kernel[(batch, n_blocks)](
            u, delta, A, Bg, Cg, D, z, bias, saved, dy, dhT,
            grad_u, grad_delta, grad_z, part_B, part_C, part_A, part_D, part_bias, grad_h0,
            length, channels, n_state, channels // groups, n_chunks,
            HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=bias is not None, HAS_DHT=dhT is not None,
            HAS_DY=dy is not None, SOFTPLUS=delta_softplus, ACC=_tl_dtype(dtype),
            CHUNK=CHUNK, BLOCK_D=block_d, BLOCK_N=block_n, num_warps=_num_warps(block_d, block_n))
        per_group = lambda p: p.view(batch, length, groups, n_blocks // groups, n_state).sum(3)  # noqa: E731
        grad_B, grad_C = per_group(part_B), per_group(part_C)  # (B, L, G, N)
        return (grad_u, grad_delta, part_A.sum(0).to(A_dtype),
                (grad_B[:, :, 0] if b_flat else grad_B).to(B_dtype),
                (grad_C[:, :, 0] if c_flat else grad_C).to(C_dtype),
                None if D is None else part_D.sum(0).to(D_dtype), grad_z,
                None if bias is None else part_bias.sum(0).to(bias_dtype),
                None if h0_dtype is None else grad_h0.to(h0_dtype), None, None)


def selective_scan_triton(u, delta, A, B, C, *, D=None, z=None, delta_bias=None, delta_softplus=False,
                          initial_state=None):
    """The selective scan through the Triton kernels above; the signature of the other backends."""
    tensors = (u, delta, A, B, C, D, z, delta_bias, initial_state)
    keep = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
    return _SelectiveScanTriton.apply(*tensors, delta_softplus, keep)
