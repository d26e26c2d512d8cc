"""Each mixer's parameter count at a reference configuration, against its paper's or official code's count.

The structured-SSM issue asks that every mixer match, within 1 percent, the count its official code
(or, without code, its paper) gives for one stated configuration. Each case below builds one layer
with the options that mirror the reference configuration and compares it with the official count,
hard-coded with its source. "run" means the count was obtained by instantiating the official module
(outside this repository) and summing its trainable parameters; "derived" means it was computed by
hand from the named file or the paper. Norms, FFNs and embeddings outside the official sequence-mixing
module are not counted. The table in docs/models.md lists the same numbers.

Cases marked xfail are known mismatches; docs/models.md says which parameters differ.
"""

import pytest

import ssmlab

TOLERANCE = 0.01


def _xfail(reason):
    return pytest.mark.xfail(strict=True, reason=reason)


CASES = [
    # state-spaces/s4 @ e757cef, models/s4/s4.py S4Block(512, mode="dplr", d_state=64, bidirectional=True,
    # n_ssm=1): configs/experiment/lra/s4-cifar.yaml. Run: 592,064.
    pytest.param("s4", 512, dict(d_state=64, bidirectional=True, n_ssm=1), 592_064, id="s4"),
    # state-spaces/s4 @ e757cef, models/s4/s4d.py S4D(256) (defaults, N=64). Run: 164,864.
    pytest.param("s4d", 256, dict(d_state=64), 164_864, id="s4d"),
    # ag1988/dss @ 777084e, src/models/sequence/ss/standalone/dss.py DSS(512, 64) with
    # configs/model/layer/dss.yaml defaults (the LRA-CIFAR run: d_model=512). Run: 329,856.
    pytest.param("dss", 512, dict(d_state=64), 329_856, id="dss"),
    # state-spaces/s4 @ e757cef, src/models/sequence/modules/lssl.py Platypus(256, d_model=N=256, learn=0,
    # dt.learn=True): LSSL-fixed with a learnt step. Derived: C (H, 1, N) 65,536 + D (H, 1) 256 + log_dt (H) 256
    # + output_linear Linear(H, H) 65,792 = 131,840 (131,584 with the step fixed, the code's default).
    pytest.param("lssl", 256, dict(d_state=256), 131_840, id="lssl-fixed"),
    # Same file with learn=1 and dt.learn=1 as in configs/model/layer/lssl.yaml. Run: 133,634.
    pytest.param("lssl", 256, dict(d_state=256, learn_A=True), 133_634, id="lssl-learnt-A"),
    # state-spaces/s4 @ e757cef, src/models/sequence/modules/s4nd.py S4ND(512) with
    # configs/experiment/s4nd/cifar/s4-cifar-2d.yaml (d_state=64, n_ssm=1, l_max=[32, 32],
    # final_act=glu, linear=False). Run: 658,304.
    # Ours keeps B fixed to ones (S4D's choice), the official learns B and P (1, 1, N/2, 2) per axis: -0.04%.
    pytest.param("s4nd", 512, dict(image_shape=(32, 32), d_state=64, n_ssm=1), 658_304, id="s4nd"),
    # raminmh/liquid-s4 @ 06031dc, src/models/sequence/ss/s4.py S4(128, d_state=7, n_ssm=128,
    # liquid_kernel="polyb", liquid_degree=2, postact="glu"): configs/experiment/lra/s4-lra-imdb.yaml and the
    # README's PB command. The official code keeps 7 // 2 = 3 conjugate pairs, which is our d_state=6.
    # Run: 36,352.
    pytest.param("liquid-s4", 128, dict(d_state=6, liquid_degree=2, liquid_kernel="pb"), 36_352, id="liquid-s4"),
    # lindermanlab/S5 @ 3c18fdb, s5/ssm.py S5SSM with bin/run_experiments/run_lra_cifar.sh (H=512,
    # ssm_size=384 -> P=192 conjugate pairs, blocks=3, bidirectional, C_init=lecun_normal). Derived:
    # Lambda 2*192 + B 192*512*2 + C1, C2 2*512*192*2 + D 512 + log_step 192 = 590,912.
    pytest.param("s5", 512, dict(d_state=384, blocks=3, bidirectional=True, activation=None), 590_912,
                 id="s5-ssm"),
    # Same, plus s5/layers.py SequenceLayer's half_glu1 output Dense(512) (run_train.py's default
    # activation_fn), norm excluded: 590,912 + 512*512 + 512 = 853,568. Derived.
    pytest.param("s5", 512, dict(d_state=384, blocks=3, bidirectional=True), 853_568, id="s5-layer"),
    # arXiv 2303.06349 appendix A pseudo-code (no official code, no stated count): nu_log, theta_log,
    # gamma_log (N), B_re, B_im (N, H), C_re, C_im (H, N), D (H); H=256, N=64. Derived:
    # 3*64 + 4*64*256 + 256 = 65,984.
    pytest.param("lru", 256, dict(d_state=64), 65_984, id="lru"),
    # HazyResearch/safari @ 02220c6, src/models/sequence/hyena.py HyenaOperator(864, l_max=2048, emb_dim=33,
    # filter_order=64, modulate=True): configs/experiment/pile/hyena.yaml. Run: 3,134,112.
    pytest.param("hyena", 864, dict(l_max=2048, emb_dim=33, filter_order=64), 3_134_112, id="hyena"),
    # HazyResearch/safari @ 02220c6, src/models/sequence/h3.py H3(768, d_state=64, head_dim=1, mode="diag",
    # measure="diag-lin"): configs/experiment/pile/h3.yaml (125M). Run: 2,610,432.
    pytest.param("h3", 768, dict(d_state=64), 2_610_432, id="h3"),
    # arXiv 2206.13947 Fig. 1 pseudo-code (no official code): E=1024, F=4096, H=256, dense layers with
    # biases; the DSS inside is ag1988/dss's DSS kernel, version "exp", N=64 complex states (the pseudo-code
    # does not state N; 64 is DSS's default), plus D. Derived: dense 9,708,800 + DSS 33,664 = 9,742,464.
    # Our d_state=128 keeps 64 complex modes.
    pytest.param("gss", 1024, dict(d_state=128, expand=4, d_ssm=256), 9_742_464, id="gss"),
    # facebookresearch/mega @ aeaa4b4, fairseq/modules/moving_average_gated_attention.py with
    # mega_lm_adaptive_big (README.lm.md, WikiText-103): d=1024, z=256, h=2048, n=16, chunk 1024,
    # rel-pos-bias rotary; norm excluded. Derived: EMA 4*1024*16 + 1024 + v_proj 1024*2048 + 2048
    # + mx_proj 1024*4352 + 4352 + h_proj 2048*1024 + 1024 + gamma, beta 4*256 + rotary 2*256 = 8,726,272.
    pytest.param("mega", 1024, dict(ndim=16, z_dim=256, v_dim=2048, chunk_size=1024, max_positions=1024),
                 8_726_272, id="mega"),
    # Doraemonzzz/tnn-pytorch @ 64b4c35 (the standalone code the official OpenNLPLab/Tnn README points to),
    # tnn_pytorch/gtu.py Gtu with the README's recommended configuration at d=512: expand_ratio=3,
    # rpe_embedding=64, rpe_layers=1, causal, use_decay, gamma=0.99. Run: 2,467,008 trainable (plus a frozen
    # 1,536-entry gamma).
    pytest.param("tnn", 512, dict(expand=3, rpe_dim=64, rpe_layers=1, decay=0.99), 2_467_008, id="tnn"),
    # microsoft/torchscale @ bf65397 (first RetNet release), torchscale/component/multiscale_retention.py with
    # retnet_xl (d=2048, value_factor=2, 8 heads): q, k (d x d + bias), v, g (d x 2d + bias), out (2d x d +
    # bias), non-affine group norm. Derived: 33,568,768.
    pytest.param("retnet", 2048, dict(n_heads=8, expand_v=2), 33_568_768, id="retnet"),
    # BlinkDL/RWKV-LM @ 524481d, RWKV-v4/src/model.py RWKV_TimeMix at n_embd=768 (RWKV-4 169M):
    # key, value, receptance, output (d x d, no bias) + time_decay, time_first, time_mix_k/v/r (d).
    # Derived: 4*768^2 + 5*768 = 2,363,136.
    pytest.param("rwkv", 768, dict(), 2_363_136, id="rwkv"),
    # idiap/fast-transformers @ 2ad36b9, fast_transformers/attention/attention_layer.py AttentionLayer with the
    # builders' defaults (4 heads x 64 = 256): four Linear(256, 256) with bias. Derived: 4*256^2 + 4*256 = 263,168.
    pytest.param("linear-attention", 256, dict(n_heads=4), 263_168, id="linear-attention"),
    # arXiv 1706.03762 section 3.2, base model (d_model=512, h=8, d_k=d_v=64): W_Q, W_K, W_V, W_O, the paper
    # writes no biases. Derived: 4*512^2 = 1,048,576 (torch.nn.MultiheadAttention, with biases: 1,050,624).
    pytest.param("attention", 512, dict(n_heads=8), 1_048_576, id="attention"),
    # fla-org/flash-linear-attention @ bc3b101, fla/layers/delta_net.py DeltaNet() with its defaults
    # (hidden_size=1024, 4 heads, expand_k = expand_v = 1, short convolutions of width 4 without bias,
    # use_gate=False, RMSNorm(256) output norm). Run: 4,210,944.
    pytest.param("deltanet", 1024, dict(), 4_210_944, id="deltanet"),
    # Same commit, fla/layers/gated_deltanet.py GatedDeltaNet() with its defaults (hidden_size=2048,
    # 6 heads, head_dim=256, expand_v=2, use_gate=True, short convolutions of width 4 without bias). Run: 25,215,500.
    pytest.param("gated-deltanet", 2048, dict(), 25_215_500, id="gated-deltanet"),
    # Same commit, fla/layers/gla.py GatedLinearAttention() with its defaults (hidden_size=1024, 4 heads,
    # expand_k=0.5, expand_v=1, gate_low_rank_dim=16, output gate, no short convolutions). Run: 4,219,648.
    pytest.param("gla", 1024, dict(), 4_219_648, id="gla"),
    # Same commit, fla/layers/hgrn2.py HGRN2Attention() with its defaults (hidden_size=1024, expand_ratio=128,
    # so 8 heads, no short convolutions). Run: 4,195,328.
    pytest.param("hgrn2", 1024, dict(), 4_195_328, id="hgrn2"),
    # goombalab/hydra @ 55bef74, hydra/modules/hydra.py Hydra(768) with the BERT configuration
    # (hydra/bert/src/configuration_bert.py, yamls/pretrain/hydra.yaml: hidden 768, d_state=64, d_conv=7, expand=2,
    # headdim=64). Run: 3,825,224 (473,624 at d_model=256).
    pytest.param("hydra", 768, dict(), 3_825_224, id="hydra"),
    # NX-AI/xlstm @ 032a6fb, xlstm/blocks/mlstm/layer.py mLSTMLayer(mLSTMLayerConfig(embedding_dim=128,
    # num_heads=4)) with its defaults otherwise (proj_factor=2 -> inner width 256, conv1d_kernel_size=4,
    # qkv_proj_blocksize=4, bias=False), the README's mLSTM configuration. Run: 109,320.
    pytest.param("mlstm", 128, dict(n_heads=4), 109_320, id="mlstm"),
    # state-spaces/mamba @ e9594ce, mamba_ssm/modules/mamba3.py Mamba3(1024) with its defaults (d_state=128,
    # expand=2, headdim=64, ngroups=1, rope_fraction=0.5, SISO, no output norm). Run: 6,693,184.
    pytest.param("mamba3", 1024, dict(), 6_693_184, id="mamba3"),
    # Same commit, Mamba3(1024, is_mimo=True, mimo_rank=4), other options at their defaults. Run: 7,528,768.
    pytest.param("mamba3-mimo", 1024, dict(), 7_528_768, id="mamba3-mimo"),
    # Same commit, fla/layers/rwkv7.py RWKV7Attention(hidden_size=1024, head_dim=64, layer_idx=0,
    # num_hidden_layers=12): 16 heads of 64, LoRA ranks 64 (decay), 64 (a), 160 (gate), no value-residual LoRA
    # (layer 0). Run: 4,797,440. The official train_temp RWKV_Tmix_x070 also declares v0, v1, v2 at layer 0,
    # which its first layer never uses (+ 1024 + 2 * 1024 * 64 = 4,929,536).
    pytest.param("rwkv7", 1024, dict(), 4_797_440, id="rwkv7"),
]


@pytest.mark.parametrize("name, d_model, options, official", CASES)
def test_parameter_count_matches_official(name, d_model, options, official):
    mixer = ssmlab.create_mixer(name, d_model, **options)
    ours = sum(p.numel() for p in mixer.parameters() if p.requires_grad)
    assert abs(ours - official) <= TOLERANCE * official, (
        f"{name}: {ours:,} parameters, official {official:,} ({100 * (ours - official) / official:+.2f}%)")
