"""The kinds of modality spamo knows (RNA, ADT, ATAC): one table instead of name checks scattered over the loaders.

A kind says which names a MuData file may use for it, whether its input matrix must hold non-negative counts (RNA
and ADT do; a normalised peak matrix such as `adata_peaks_normalized.h5ad` may hold other values), which file names
a dataset folder conventionally uses for it, and whether it is the transcriptome (the modality the data types put
first and preprocess with HVGs). A modality name that is no kind (a user's own) is allowed: it simply has none of
these conventions.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModalityKind:
    name: str  # the conventional name (the data types' modality names)
    aliases: tuple[str, ...]  # other names for it (MuData modality keys, user spellings), lower case
    counts_required: bool  # the input matrix must hold non-negative counts
    default_files: tuple[str, ...]  # file names tried in a dataset folder, in order
    is_rna: bool = False


KINDS: dict[str, ModalityKind] = {}


def register_kind(kind: ModalityKind) -> ModalityKind:
    KINDS[kind.name] = kind
    return kind


register_kind(ModalityKind("RNA", ("rna", "gex", "expression"), counts_required=True,
                           default_files=("adata_RNA.h5ad",), is_rna=True))
register_kind(ModalityKind("ADT", ("adt", "prot", "protein"), counts_required=True,
                           default_files=("adata_ADT.h5ad",)))
register_kind(ModalityKind("ATAC", ("atac", "peaks", "chromatin"), counts_required=False,
                           default_files=("adata_ATAC.h5ad", "adata_peaks_normalized.h5ad")))


def kind_of(name: str) -> ModalityKind | None:
    """The kind a modality name stands for (its name or an alias, case-insensitively), or None."""
    lowered = name.lower()
    for kind in KINDS.values():
        if lowered == kind.name.lower() or lowered in kind.aliases:
            return kind
    return None


def counts_required(name: str) -> bool:
    kind = kind_of(name)
    return kind is not None and kind.counts_required


def default_files(name: str) -> tuple[str, ...]:
    """Conventional file names of a modality in a dataset folder (`adata_<name>.h5ad` for a user's own name)."""
    kind = kind_of(name)
    return kind.default_files if kind is not None else (f"adata_{name}.h5ad",)


def names_for(name: str) -> tuple[str, ...]:
    """Every lower-case name a modality may go by (for matching MuData keys)."""
    kind = kind_of(name)
    return (name.lower(),) + (kind.aliases if kind is not None else ())


__all__ = ["ModalityKind", "KINDS", "register_kind", "kind_of", "counts_required", "default_files", "names_for"]
