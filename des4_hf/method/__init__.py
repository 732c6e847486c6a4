"""The paper in one folder (DeS4, IJCAI-23; SPEC §1–4), one idea per file, each equation found by file name:

- :mod:`~des4_hf.method.recipe`: the method name (des4 / mean-teacher / supervised) and the Table 3 / 4 switches
  resolved into the flags that apply;
- :mod:`~des4_hf.method.step`: the teacher–student forward (Eq. 4, SPEC §2 steps 1–8) and what follows the optimizer
  step (BatchNorm statistics and samples summed over processes, Eq. 12, Eq. 5);
- :mod:`~des4_hf.method.losses`: Eq. 7–8 (the teacher decoder's unbiased loss), Eq. 9 (entropy), cross-entropy and
  the weight of an unlabeled pixel;
- :mod:`~des4_hf.method.sampling`: Multi-Entropy Sampling, Eq. 9–11, and the Table 4 samplers;
- :mod:`~des4_hf.method.prototypes`: class statistics, their sum over processes, Eq. 12, the initial bank;
- :mod:`~des4_hf.method.pseudo_labels`: pseudo labels, their threshold, CutMix;
- :mod:`~des4_hf.method.teacher`: Eq. 5 (the EMA teacher), its τ warm-up and the λ2 ramp-up.

The prototype logits (Eq. 6) are the model's own forward (:mod:`des4_hf.modeling_des4`).
"""
