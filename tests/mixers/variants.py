"""The test configurations of every registered mixer: mixer name -> list of option dicts.

The conformance suite (tests/mixers/test_conformance.py) runs every variant through the
mixer contract at ``D_MODEL = 16``; the model tests (tests/models) build each causal
mixer with its first variant. Keep variants small (a few states, short chunks) so the
suite stays fast, and give one per option that changes the computation (another
discretisation, form, feature map, bidirectional ...). ``[{}]`` means the defaults.

A mixer registered with ``inputs="image"`` works over a grid: each of its variants sets
``image_shape`` and the conformance suite feeds it sequences of ``H * W`` positions.
"""

from __future__ import annotations

VARIANTS: dict[str, list[dict]] = {
    "attention": [{}, {"window": 3}, {"rotary": False}, {"n_heads": 4, "window": 5, "rotary_base": 100.0}],
    "bi-mamba": [{"d_state": 4}, {"d_state": 4, "shared_projections": False, "combine": "add"}],
    "bi-mamba2": [{"headdim": 8, "d_state": 8, "chunk_size": 4}],
    "bidirectional": [{"mixer": "mamba", "d_state": 4}, {"mixer": "attention", "combine": "concat"}],
    "cross-scan": [{"mixer": "mamba", "image_shape": (3, 4), "d_state": 4},
                   {"mixer": "s4d", "image_shape": (3, 4), "d_state": 4, "shared": True}],
    "deltanet": [{"n_heads": 2, "chunk_size": 4},
                 {"n_heads": 1, "expand_k": 0.5, "use_gate": True, "allow_neg_eigval": True, "conv_size": 2,
                  "conv_bias": True}],
    "dss": [{"d_state": 8}, {"d_state": 8, "version": "softmax", "l_max": 32},
            {"d_state": 8, "sep_dt": False, "activation": "glu"}],
    "gated-deltanet": [{"n_heads": 2, "headdim": 4, "chunk_size": 4},
                       {"n_heads": 1, "headdim": 8, "expand_v": 1.0, "use_gate": False, "conv_size": 3}],
    "gla": [{"n_heads": 2, "chunk_size": 4},
            {"n_heads": 1, "expand_k": 1.0, "gate_low_rank_dim": 4, "use_output_gate": False, "clamp_min": -0.05,
             "use_short_conv": True, "conv_size": 3, "conv_bias": True}],
    "gss": [{"d_state": 8}, {"d_state": 4, "expand": 2, "d_ssm": 8}],
    "h3": [{"d_state": 8}, {"d_state": 4, "headdim": 4}],
    "hgrn2": [{"expand_ratio": 4, "chunk_size": 4},
              {"expand_ratio": None, "n_heads": 2, "use_short_conv": True, "conv_size": 2}],
    "hydra": [{"headdim": 8, "d_state": 8, "chunk_size": 4},
              {"headdim": 4, "d_state": 4, "ngroups": 2, "chunk_size": 3, "d_conv": 3, "bias": True}],
    "hyena": [{"l_max": 64, "filter_order": 16}, {"l_max": 64, "order": 3, "filter_order": 8, "emb_dim": 5}],
    "linear-attention": [{}, {"n_heads": 4, "chunk_size": 4}, {"form": "parallel"},
                         {"feature_map": "relu", "chunk_size": 5}],
    "liquid-s4": [{"d_state": 8}, {"d_state": 8, "liquid_degree": 3},
                  {"d_state": 8, "liquid_degree": 3, "liquid_kernel": "kb"},
                  {"d_state": 8, "liquid_kernel": "kb", "correlation_activation": "lecun"}],
    "lru": [{}, {"d_state": 8, "r_min": 0.9, "r_max": 0.999, "max_phase": 0.314}],
    "lssl": [{"d_state": 8}, {"d_state": 6, "learn_A": True, "measure": "legt"},
             {"d_state": 6, "learn_A": "dense", "measure": "lagt"}],
    "mamba": [{}, {"d_state": 4, "expand": 1, "d_conv": 2, "dt_rank": 3}],
    "mamba3": [{"headdim": 8, "d_state": 8, "chunk_size": 4},
               {"headdim": 8, "d_state": 6, "chunk_size": 3, "ngroups": 2, "rope_fraction": 1.0,
                "is_outproj_norm": True}],
    "mamba3-mimo": [{"headdim": 8, "d_state": 8, "chunk_size": 4, "mimo_rank": 2},
                    {"headdim": 8, "d_state": 8, "chunk_size": 2, "mimo_rank": 3, "is_outproj_norm": True}],
    "mamba2": [{"headdim": 8, "d_state": 8, "chunk_size": 4},
               {"headdim": 4, "d_state": 4, "ngroups": 2, "chunk_size": 3, "d_conv": 2}],
    "mega": [{"ndim": 4, "max_positions": 64}, {"ndim": 2, "chunk_size": 4, "max_positions": 64}],
    "mlstm": [{"n_heads": 2, "round_to": 8, "chunk_size": 4},
              {"n_heads": 4, "proj_factor": 1.0, "round_to": 16, "qkv_proj_blocksize": 2, "conv_size": 2,
               "bias": True, "backend": "reference"}],
    "retnet": [{}, {"n_heads": 4, "chunk_size": 4}, {"form": "parallel", "n_heads": 2},
               {"normalize": False, "n_heads": 4, "chunk_size": 3}],
    "rwkv": [{}, {"channel_mix": True}, {"layer_id": 2, "n_layers": 4, "channel_mix": True, "ffn_mult": 2}],
    "rwkv7": [{"head_dim": 4, "chunk_size": 4},
              {"n_heads": 2, "decay_low_rank_dim": 4, "a_low_rank_dim": 3, "gate_low_rank_dim": 5, "layer_id": 1,
               "n_layers": 3, "chunk_size": 3}],
    "s4": [{"d_state": 8}, {"d_state": 8, "n_ssm": 2, "rank": 1}, {"d_state": 8, "bidirectional": True}],
    "s4d": [{}, {"init": "inv", "d_state": 8}, {"init": "legs", "d_state": 8}, {"d_state": 8, "bidirectional": True},
            {"d_state": 8, "discretization": "bilinear", "n_ssm": 2}],
    "s4nd": [{"image_shape": (4, 4), "d_state": 8}, {"image_shape": (4, 4), "d_state": 8, "n_ssm": 1}],
    "s5": [{}, {"d_state": 8, "blocks": 2, "discretization": "bilinear", "activation": "full_glu"},
           {"d_state": 8, "blocks": 4, "bidirectional": True}, {"d_state": 8, "blocks": 1, "activation": None},
           {"d_state": 16, "c_init": "complex_normal"}],
    "tnn": [{"rpe_dim": 8}, {"rpe_dim": 8, "bidirectional": True, "expand": 2}],
}


# The parameters (and fixed buffers) each mixer keeps at float32 under bfloat16, by name pattern, for
# tests/mixers/test_precision.py. A new mixer needs an entry beside its variants: a list of its A, dt and
# D-like tensors (declared with ssm_parameter), or [] when it has none. Wrappers of another mixer need none.
KEPT = {
    "attention": [],
    "deltanet": [],
    "dss": ["log_Lambda_real", "Lambda_imag", "W", "log_dt", "D"],
    "gated-deltanet": ["A_log", "dt_bias"],
    "gla": [],
    "gss": ["ssm.log_dt", "ssm.log_A_real", "ssm.A_imag", "ssm.D"],
    "h3": ["shift_D", "ssm.log_dt", "ssm.log_A_real", "ssm.A_imag", "ssm.B", "ssm.D"],
    "hgrn2": [],
    "hydra": ["A_log", "D", "dt_bias"],
    "hyena": ["bias", "filter.decay_rates"],
    "linear-attention": [],
    "liquid-s4": ["log_A_real", "A_imag", "P", "B", "log_dt", "D"],
    "lru": ["nu_log", "theta_log", "gamma_log", "D"],
    "lssl": ["A", "B", "A_*", "log_dt", "D"],
    "mamba": ["A_log", "D", "dt_proj.bias"],
    "mamba3": ["D", "dt_bias"],
    "mamba3-mimo": ["D", "dt_bias"],
    "mamba2": ["A_log", "D", "dt_bias"],
    "mega": ["alpha", "delta", "omega"],
    "mlstm": [],
    "retnet": [],
    "rwkv": ["time_decay", "time_first"],
    "rwkv7": [],
    "s4": ["log_A_real", "A_imag", "P", "B", "log_dt", "D"],
    "s4d": ["ssm.log_dt", "ssm.log_A_real", "ssm.A_imag", "ssm.D"],
    "s4nd": ["axis_?.log_dt", "axis_?.log_A_real", "axis_?.A_imag", "D"],
    "s5": ["Lambda_re", "Lambda_im", "log_step", "D"],
    "tnn": [],
}

class MissingVariantsError(LookupError):
    """A registered mixer without an entry in ``VARIANTS``."""


def variants(name: str) -> list[dict]:
    """The test configurations of mixer ``name``; a clear error if it has none."""
    if name not in VARIANTS:
        raise MissingVariantsError(
            f"mixer {name!r} has no test variants: add {name!r}: [{{...}}, ...] to VARIANTS in "
            f"tests/mixers/variants.py (a list of option dicts; [{{}}] for the defaults)")
    return VARIANTS[name]


def first_variant(name: str) -> dict:
    """The first (smallest) test configuration of ``name``: what the model tests build."""
    return dict(variants(name)[0])


def sequence_length(options: dict, default: int) -> int:
    """The length a variant takes: ``H * W`` for one with an ``image_shape``, else ``default``."""
    if "image_shape" in options:
        height, width = options["image_shape"]
        return height * width
    return default
