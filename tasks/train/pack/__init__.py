"""Packed LoRA trials: several trials of a study train together over one frozen base model (issue [15]).

    from tasks.train.pack import ListSource, MemberSpec, run_pack
    outcomes = run_pack(cfgs[0], ListSource(MemberSpec(str(i), cfg, None, out / f"trial_{i}") for i, cfg in ...),
                        size=4)

Layout, in dependency order: `compat` (which trials can share a base: `pack_key`, `alone_reason`), `record` (what a
member's metrics.json says about the memory and time it shared), `member` (one trial in a pack: join, its own
schedule, its end), `step` (one packed optimizer step), `run` (the shared part `Pack` and the loop `run_pack`),
`sweep` (a pack launched by the sweeper: its members from the study). The model side is `model.lora.PackedGPT`.
"""

from tasks.train.pack.compat import alone_reason, pack_key
from tasks.train.pack.member import MemberOutcome, MemberSpec
from tasks.train.pack.run import ListSource, MemberSource, Pack, run_pack

__all__ = ["ListSource", "MemberOutcome", "MemberSource", "MemberSpec", "Pack", "alone_reason", "pack_key", "run_pack"]
