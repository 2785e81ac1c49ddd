"""The word–referent suite's settings (``obs eval --task word-referent``).

Split from :mod:`launch.evals.word_referent` (the suite) so that the learners'
training (:mod:`launch.evals.word_referent_learners`) can read it too.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from launch.evals.word_referent_adapt import CANDIDATE_NORMS, STUDY_CENTRINGS
from launch.evals.word_referent_trials import UNITS
from obs_dist.model.name_links import STUDY_RULES
from obs_dist.model.recent_attention import MATCHES

SETTINGS = ("class", "recording")
LEARNERS = ("obs", "dual", "dual-offline", "attention")
HELDOUT_SEED_OFFSET = 1000
CHANCE = 0.25
# The headline targets: OBS's accuracy per setting; the dual encoder near chance on novel names.
TARGETS = {"class": 0.90, "recording": 0.80}
NEAR_CHANCE = 0.10
# Ceilings with some addresses replaced by perfect ones (from the labels): which
# modality's addresses lose the most (word_referent_addresses.hebbian_ceiling).
PERFECT = {"video": ("video",), "audio": ("audio",), "both": ("video", "audio")}


@dataclass
class WordReferentConfig:
    """The word–referent suite.

    Attributes:
        settings: the ``names`` settings run, each in turn (empty: ``[names]``).
        names: the setting when ``settings`` is empty.
        train_source: training shards (``obs make-shards --from DIR``); empty:
            generate recordings. Needs ``heldout_source`` and one setting.
        heldout_source: held-out shards (other recordings).
        work_dir: folder of generated data, runs and the figure.
        recordings: training recordings generated per setting.
        heldout_recordings: held-out recordings generated per setting.
        seconds: length of each generated recording.
        objects_per_recording: objects each recording shows (>= ``candidates``).
        scene_seconds: ``[min, max]`` scene length of the generated recordings.
        name_gap: ``[min, max]`` seconds of in-view time between namings.
        carrier_fraction: share of namings said in a carrier phrase.
        gen_workers: processes generating recordings side by side, and cutting them
            into clips (the same shards whatever the number).
        seed: seed of the training recordings and of every learner's training.
        config: the training config of every learner.
        train_set: extra ``--set`` overrides of every learner's training.
        rehearsal_ratio: rehearsed batches per new one in the one-pass learners.
        steps: cap on OBS's optimizer steps (0: one whole pass).
        offline_factor: the offline dual encoder's steps per OBS step.
        models: learners trained, among ``obs``, ``dual``, ``dual-offline`` and
            ``attention``.
        recent_clips: the attention peer's context while training: the window's
            clips of the same recording ``negative_gap`` to ``recent_clips``
            before a clip.
        attention_context: the attention peer's context at test: the last
            ``attention_context`` clips of each held-out recording; 0, all of
            them, the recording OBS's study pass writes into its state (the same
            information; a cache of a few minutes of clips is small).
        attention_match: how the attention peer matches a heard clip to its
            context's clips (``model.stream.recent_match``): ``learnt`` query and
            key projections, or ``features``, the audio features' own centred
            cosine similarity at a learnt temperature.
        match_params: the peers' direct-path embedding (``model.stream.embed``)
            is widened until their trainable parameters equal OBS's as nearly
            as its width allows (the writer and the state's scales are OBS's
            own, about 14 K parameters at the recipe's sizes), so the
            comparison is at equal trainable parameters; false: the peers keep
            OBS's embedding width (the figures before the sixteenth round).
        candidates: candidate videos per trial.
        min_occurrences: occurrences a text needs to give trials.
        min_purity: share of its occurrences with its referent in view.
        min_gap: clips between the query and a candidate, when possible.
        trial_seed: seed of the trials' candidates and order.
        trial_unit: what a trial's text is: ``line`` (a whole transcript line
            that recurs, as the generator's bare names do) or ``name`` (a run of
            up to four words inside the lines, each utterance given to the one
            that most surely names one object: for narration whose lines vary;
            :mod:`launch.evals.word_referent_trials`).
        study: how the held-out recordings are studied: ``apart`` (each in a
            fresh big state of its own, and its trials answered from that state:
            as the attention peer attends over its own recording only) or
            ``together`` (all in one state, one batch row each: the score then
            also measures how the recordings interfere, and falls as more are
            held out; the figures in docs/results.md before 2026-12-06's twelfth
            round).
        study_rule: how OBS writes its state while studying a held-out recording
            and answering its trials: ``learnt`` (the rule it was trained with)
            or ``name_links`` (each name's own nodes linked to the pictures seen
            until the next speech, and nothing else;
            :func:`~obs_dist.model.name_links.name_link_step`). Training is not
            affected, so one trained model can be scored both ways.
        study_nodes: with ``name_links``, how many nodes each clip addresses
            (its product keys' best; 0: the writer's ``k_max``). More nodes make
            two pictures of one object at different moments share more of them.
        study_lookback: with ``name_links``, how many pictures before a heard
            name it is linked to as well (0: only those after it, until the next
            speech).
        study_decay: with ``name_links``, the name's weight kept after each
            picture it is linked to (1: held at full weight until the next speech).
        study_centring: the statistics that centre OBS's addresses while it
            studies a held-out recording and answers its trials: ``running``
            (training's) or ``recording`` (the recording's own, from all its
            clips, no label read: :mod:`launch.evals.word_referent_adapt`;
            ``study = "apart"`` only).
        candidate_norm: how OBS's scores of a trial's candidates are taken:
            ``none``, as they are, or ``speech``, each candidate's score z-scored
            over every clip of its recording that the speech gate passes (how
            strongly speech at large recalls that picture;
            :func:`~launch.evals.word_referent_adapt.normalised`).
        study_streams: rows of the study pass (0: one per held-out recording;
            ``together`` only).
        heldout_may_be_trained: let ``heldout_source`` share recordings with
            ``train_source`` (a diagnostic of memorisation; refused otherwise,
            since a score on trained recordings is recall, not word learning).
        query_batch: queries scored together.
        threads: torch intra-op threads.
        reuse_trained: a learner already trained in ``work_dir`` with exactly the
            config it would be trained with now is loaded, not trained again (to
            score the same learners on other held-out recordings); a learner
            there trained otherwise is refused, never silently reused.
    """

    settings: list[str] = field(default_factory=list)
    names: str = "class"
    train_source: str = ""
    heldout_source: str = ""
    work_dir: str = "runs/eval/word-referent"
    recordings: int = 16
    heldout_recordings: int = 4
    seconds: float = 300.0
    objects_per_recording: int = 8
    scene_seconds: list[float] = field(default_factory=lambda: [8.0, 30.0])
    name_gap: list[float] = field(default_factory=lambda: [3.0, 10.0])
    carrier_fraction: float = 0.5
    gen_workers: int = 1
    seed: int = 0
    config: str = "configs/av_stream.toml"
    train_set: list[str] = field(default_factory=list)
    rehearsal_ratio: int = 7
    steps: int = 0
    offline_factor: float = 2.0
    models: list[str] = field(default_factory=lambda: list(LEARNERS))
    recent_clips: int = 64
    attention_context: int = 0
    attention_match: str = "features"
    match_params: bool = True
    candidates: int = 4
    min_occurrences: int = 2
    min_purity: float = 0.6
    min_gap: int = 10
    trial_seed: int = 0
    trial_unit: str = "line"
    study: str = "apart"
    study_rule: str = "learnt"
    study_nodes: int = 0
    study_lookback: int = 0
    study_decay: float = 1.0
    study_centring: str = "running"
    candidate_norm: str = "none"
    study_streams: int = 0
    heldout_may_be_trained: bool = False
    query_batch: int = 256
    threads: int = 1
    reuse_trained: bool = False

    def __post_init__(self) -> None:
        self.settings = list(self.settings) or [self.names]
        bad = [s for s in self.settings if s not in SETTINGS]
        if bad or len(set(self.settings)) != len(self.settings):
            raise ValueError(f"settings must be distinct entries of {list(SETTINGS)}, "
                             f"got {self.settings}")
        if not self.models or any(n not in LEARNERS for n in self.models) \
                or len(set(self.models)) != len(self.models):
            raise ValueError(f"models must be distinct entries of {list(LEARNERS)}, "
                             f"got {self.models}")
        if "obs" not in self.models and self.steps < 1:
            raise ValueError("models without 'obs' need steps >= 1 (the peers' step count)")
        if bool(self.train_source) != bool(self.heldout_source):
            raise ValueError("train_source and heldout_source must be given together")
        if self.train_source and len(self.settings) != 1:
            raise ValueError(f"given shards are one setting; settings has {self.settings}")
        for name in ("recordings", "heldout_recordings", "gen_workers", "query_batch",
                     "threads", "recent_clips"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.attention_match not in MATCHES:
            raise ValueError(f"attention_match must be one of {list(MATCHES)}, "
                             f"got {self.attention_match!r}")
        for name in ("steps", "rehearsal_ratio", "study_streams", "study_nodes",
                     "study_lookback", "min_gap",
                     "attention_context"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.seconds < 1:
            raise ValueError(f"seconds must be >= 1, got {self.seconds}")
        if self.offline_factor <= 0:
            raise ValueError(f"offline_factor must be > 0, got {self.offline_factor}")
        if self.candidates < 2 or self.objects_per_recording < self.candidates:
            raise ValueError(f"need 2 <= candidates <= objects_per_recording, got "
                             f"candidates={self.candidates}, "
                             f"objects_per_recording={self.objects_per_recording}")
        if self.study not in ("apart", "together"):
            raise ValueError(f"study must be 'apart' or 'together', got {self.study!r}")
        if self.study_rule not in STUDY_RULES:
            raise ValueError(f"study_rule must be one of {list(STUDY_RULES)}, "
                             f"got {self.study_rule!r}")
        for name, off in (("study_nodes", 0), ("study_lookback", 0), ("study_decay", 1.0)):
            if getattr(self, name) != off and self.study_rule != "name_links":
                raise ValueError(f"{name} is a setting of study_rule = 'name_links', "
                                 f"got study_rule = {self.study_rule!r}")
        if not 0.0 < self.study_decay <= 1.0:
            raise ValueError(f"study_decay must be in (0, 1], got {self.study_decay}")
        if self.study_centring not in STUDY_CENTRINGS:
            raise ValueError(f"study_centring must be one of {list(STUDY_CENTRINGS)}, "
                             f"got {self.study_centring!r}")
        if self.study_centring == "recording" and self.study != "apart":
            raise ValueError("study_centring = 'recording' centres each recording by its own "
                             "statistics: it needs study = 'apart'")
        if self.candidate_norm not in CANDIDATE_NORMS:
            raise ValueError(f"candidate_norm must be one of {list(CANDIDATE_NORMS)}, "
                             f"got {self.candidate_norm!r}")
        if self.study == "apart" and self.study_streams:
            raise ValueError("study_streams sets the rows of one shared study state: it needs "
                             "study = 'together' (apart: one row per recording)")
        if self.trial_unit not in UNITS:
            raise ValueError(f"trial_unit must be one of {list(UNITS)}, got {self.trial_unit!r}")
        if self.min_occurrences < 1 or not 0 <= self.min_purity <= 1:
            raise ValueError(f"need min_occurrences >= 1 and min_purity in [0, 1], got "
                             f"{self.min_occurrences}, {self.min_purity}")


QUICK = [
    "settings=['class']", "recordings=2", "heldout_recordings=1", "seconds=30",
    "objects_per_recording=4", "scene_seconds=[3.0, 6.0]", "name_gap=[5.0, 10.0]",
    "carrier_fraction=0.0", "rehearsal_ratio=1", "steps=6", "offline_factor=1.0",
    "min_gap=3", "work_dir='runs/eval/word-referent-quick'",
    "train_set=['state.nodes=1024', 'data.streams=2', 'task.batch=2', 'data.window=8', "
    "'model.stream.negative_gap=3', 'train.progress=false', 'train.log_every=1000', "
    "'train.warmup=2']",
]
