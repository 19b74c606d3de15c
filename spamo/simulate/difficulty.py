"""How hard a simulation is (docs/data.md section 3): `Difficulty`, whose defaults are the original simulation.

Graded difficulty is what lets the selection benchmark (configs/benchmarks/selection.toml) tell a good configuration
from a lucky one: more non-spatial noise, weaker contrast, more domains each modality merges, irregular shapes, and a
pair of domains that only one weak modality sees.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from spamo.simulate.counts import ModalityModel


@dataclass(frozen=True)
class Difficulty:
    """How hard a simulation is. The defaults are the original simulation (every factor 1, nothing extra merged).

    - ``noise``: multiplies the non-spatial factor loadings and the overdispersion 1/theta of RNA and ADT.
      Non-spatial variation is what a method must learn to ignore; more of it hides the domains.
    - ``contrast``: multiplies every planted log-fold change (how different domains look); ``modality_contrast``
      multiplies one modality's on top (a weak modality).
    - ``blind``: extra pairs of domains each modality merges (shares features for), on top of its own blind pair:
      fewer domains each modality can tell apart, so more depends on integration.
    - ``irregularity``: 0 = smooth blobs and gently wavy bands; towards 1 the boundaries get lobes and
      interdigitate (a seeded smooth field warps the positions the domains are drawn on).
    - ``confusable``: a pair (a, b) merged by every modality but ``confusable_modality``, where b keeps a's
      features plus its own at ``confusable_contrast`` of the usual fold change: visible only to one weak modality.
    """

    noise: float = 1.0
    contrast: float = 1.0
    modality_contrast: dict = field(default_factory=dict)
    blind: dict = field(default_factory=dict)  # modality -> list of (a, b) pairs
    irregularity: float = 0.0
    confusable: tuple | None = None
    confusable_modality: str | None = None
    confusable_contrast: float = 0.3

    def merged_pairs(self, model: ModalityModel, n_domains: int) -> list[tuple[int, int]]:
        """Every pair of domains `model` cannot tell apart under this difficulty."""
        pairs = [tuple(model.blind_pair(n_domains))]
        pairs += [tuple(int(v) for v in pair) for pair in self.blind.get(model.name, [])]
        if self.confusable is not None and model.name != self.confusable_modality:
            pairs.append(tuple(int(v) for v in self.confusable))
        return pairs


DEFAULT_DIFFICULTY = Difficulty()
