"""Inter-annotator agreement statistics for annotation quality control.

Preference and label data for RLHF is only as good as the people who produce it, so the
annotation-QC stage measures how far annotators agree beyond what chance alone would give.
Raw percent agreement is misleading when one label dominates (two annotators who both answer
"A" 90 % of the time agree 82 % of the time by chance), so every coefficient here compares the
observed agreement with the agreement expected from the label frequencies.

Which statistic to use:

* `cohen_kappa` -- exactly two raters who labelled the same items. Chance agreement comes from
  each rater's own label distribution, so a rater who over-uses one label is not rewarded for it.
  Used for annotator-vs-annotator and annotator-vs-gold comparisons.
* `fleiss_kappa` -- every item was labelled by the same number of raters (not necessarily the
  same people), summarised as an items x categories count matrix. The usual choice for a fixed
  design such as "every comparison gets 3 votes".
* `krippendorff_alpha` -- any number of coders, missing labels allowed, and nominal, ordinal,
  interval or ratio data. The right choice for real annotation queues, where coverage is uneven
  and labels are often Likert scores rather than categories.
* `pairwise_agreement` -- Cohen's kappa for every pair of annotators on the items both labelled,
  to find the pair (and so the annotator) that disagrees with everyone.
* `leave_one_out_agreement` -- each annotator against the majority of the others, the standard
  screen for a careless or adversarial annotator.
* `cohen_kappa_interval` -- Cohen's kappa with its large-sample confidence interval (Fleiss,
  Cohen & Everitt 1969), for an AI judge against the human majority on a review sample: a
  small sample must not pass an agreement gate by luck.
* `landis_koch_band` -- the verbal bands of Landis & Koch (1977), for reports.
* `wilson_interval` and `binomial_test_two_sided` -- accuracy on gold questions needs a
  confidence interval that behaves near 0 % and 100 % (Wilson's does, the Wald interval does
  not), and position bias ("the annotator picks the left response 70 % of the time") is an exact
  binomial test against p = 0.5.

All values match the reference implementations (scikit-learn's ``cohen_kappa_score``,
statsmodels' ``fleiss_kappa``, the ``krippendorff`` package and ``scipy.stats.binomtest``) to
1e-9; this module needs only numpy and is vectorised so that it stays fast on hundreds of
thousands of items.

Conventions for degenerate input, shared by all functions:

* Invalid input (empty data, mismatched lengths, ragged matrices, fewer than two raters, no
  item labelled by two raters, unknown levels, non-numeric interval data, ...) raises
  `AgreementError`, a `ValueError` whose message says what is wrong. No other exception type
  escapes for bad data.
* When every rating is the same single value, chance agreement is 1 and the chance-corrected
  coefficients are 0/0. Observed agreement is then perfect too, so ``cohen_kappa``,
  ``fleiss_kappa`` and ``krippendorff_alpha`` return ``1.0`` instead of NaN (scikit-learn and
  statsmodels return NaN, the ``krippendorff`` package raises). Such a batch carries no
  information about reliability; a QC report should also look at how many distinct labels were
  used before trusting the 1.0.
* Missing labels are ``None`` or NaN (and, for string arrays, the string ``"nan"``, which is what
  numpy makes of NaN in a list of strings); matrix functions also accept a ``missing=`` sentinel.

The statistics live one family per module: `kappa` (Cohen, Fleiss), `krippendorff`,
`annotators` (pairwise and leave-one-out), `proportions` (bands, Wilson, binomial test), on
the shared input handling of `encoding`; import them from this package.
"""

from __future__ import annotations

from rlhfspec.runtime.annotation.agreement.annotators import (
    LeaveOneOutResult,
    PairwiseAgreement,
    leave_one_out_agreement,
    pairwise_agreement,
)
from rlhfspec.runtime.annotation.agreement.encoding import (
    AgreementError,
    LabelMatrix,
    Labels,
    Level,
)
from rlhfspec.runtime.annotation.agreement.kappa import (
    KappaInterval,
    category_counts,
    cohen_kappa,
    cohen_kappa_interval,
    fleiss_kappa,
)
from rlhfspec.runtime.annotation.agreement.krippendorff import krippendorff_alpha
from rlhfspec.runtime.annotation.agreement.proportions import (
    binomial_test_two_sided,
    landis_koch_band,
    wilson_interval,
)

__all__ = [
    "AgreementError",
    "LeaveOneOutResult",
    "Level",
    "LabelMatrix",
    "Labels",
    "PairwiseAgreement",
    "binomial_test_two_sided",
    "category_counts",
    "KappaInterval",
    "cohen_kappa",
    "cohen_kappa_interval",
    "fleiss_kappa",
    "krippendorff_alpha",
    "landis_koch_band",
    "leave_one_out_agreement",
    "pairwise_agreement",
    "wilson_interval",
]
