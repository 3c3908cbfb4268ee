"""Synthetic MovieLens-100k-like rating data, for developing recommenders without tuning on real MovieLens.

The generator reproduces the structure of ML-100k (943 users, 1682 items, 100k explicit 1..5 ratings over ~7
months) rather than its exact numbers:

* **Items** -- 18 ML genres with ML's genre prevalence; each item has 1-3 genres drawn with realistic
  co-occurrence (Action+Adventure, Animation+Children's, Crime+Thriller, ...). Most items are a *back catalog*
  released before the timeline starts (years skewed recent, plus a tail of classics); the rest are released during
  the timeline. Titles come from genre-flavoured word pools plus the release year ("Galactic Invasion (1997)") and
  descriptions name the genres, so the text carries a (noisy) content signal.
* **Latent tastes** -- items and users live in a low-rank latent space (``latent_dim``); a share
  (``genre_alignment``) of each vector is a mix of per-genre embeddings, the rest is idiosyncratic. Affinity is the
  dot product, standardised to unit variance. Items also have a quality bias, users a rating bias.
* **Exposure** -- each item has a log-normal base popularity correlated with its quality, an ageing factor, and a
  hype burst after release (amplitude correlated with popularity) that decays over ``hype_decay_days``. An item
  cannot be rated before its release. New items keep arriving during the whole timeline (release times uniform over
  its first 95%), so the catalog at any "now" holds items that did not exist earlier.
* **Category waves** -- what is popular shifts: each genre's exposure is multiplied by ``exp(wave_g(t))``, a smooth
  curve over the timeline (a sum of three sinusoids with random phases and periods log-uniform in
  ``genre_wave_days``, six weeks to a year: fads and promotions up to yearly seasons, which a ~7-month window sees as
  trends), standardised over the timeline to mean 0 and standard deviation ``genre_wave``. At the default 0.5 a
  genre's peaks are ~2x (and its troughs ~0.5x) its average exposure, like seasonal categories in a shop. An item's
  factor is the mean of its genres' log factors; the genre a user explores in a run (see *Choice*) follows the same
  waves. The waves are global (the same for every user), so what gets rated depends on when.
* **Activity over time** -- each user has one to a few sessions at random times across the timeline; the first one
  holds most of the user's ratings, later ones follow days to weeks apart. Ratings inside a session are seconds to
  minutes apart. In addition, a share ``return_prob`` of users comes back once after a long break (uniform in
  ``return_gap_days`` after their last activity, 30-120 days by default) for a short session holding ~``return_share``
  of their ratings; a return that would fall after the end of the timeline is not observed (censored: those ratings
  stay in the user's last session), so fewer users than ``return_prob`` show one. A returning user's taste follows
  the same drift as the rest of the history, and the choices at the return see the catalog, hype and waves of then.
* **Choice** -- the user's history is built in short *runs*: each run samples items without replacement
  (Gumbel-top-k, i.e. Plackett-Luce) with log-weight ``log exposure(t) + affinity / temperature + focus bonus``,
  where the focus bonus favours one genre the user is exploring in that run (runs often continue a genre; a new
  session starts a new run), and the user's taste drifts linearly from the first to the last rating. So the end of
  a history resembles, but is not the same as, its beginning, and what was new, hyped or in season while the user
  was active matters.
* **Ratings** -- a latent score ``user bias + quality + affinity(at that time) + noise`` is cut into 1..5 with
  thresholds calibrated (quantiles over all generated events) to ML-100k's rating histogram. Exposure-driven
  choices of low-affinity items therefore end up as low ratings, as in real data. Only this histogram is
  calibrated; the other statistics (popularity skew, activity tail, timing, sequence structure) emerge from the
  model and the knobs of ``SynthConfig``, set by comparison with ML-100k's published summary statistics.

Everything is vectorised over items per run (no per-event loop over the catalog). Deterministic by seed.

``python -m local.synth_ratings --out DIR [--users N --items N --seed S]`` writes ``products.jsonl`` and
``events.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

DAY = 86_400
YEAR_DAYS = 365.25

# The 18 MovieLens genres and how many ML-100k movies carry each (the prevalence the generator follows).
GENRES: tuple[str, ...] = (
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)
GENRE_COUNTS: tuple[int, ...] = (251, 135, 42, 122, 505, 109, 50, 725, 22, 24, 92, 56, 61, 247, 101, 251, 71, 27)
# Genre pairs that co-occur much more often than chance.
GENRE_PAIRS: tuple[tuple[str, str], ...] = (
    ("Action", "Adventure"),
    ("Action", "Thriller"),
    ("Action", "Sci-Fi"),
    ("Action", "War"),
    ("Action", "Western"),
    ("Action", "Crime"),
    ("Adventure", "Children's"),
    ("Adventure", "Sci-Fi"),
    ("Adventure", "Fantasy"),
    ("Animation", "Children's"),
    ("Animation", "Musical"),
    ("Children's", "Comedy"),
    ("Children's", "Fantasy"),
    ("Children's", "Musical"),
    ("Comedy", "Romance"),
    ("Comedy", "Drama"),
    ("Drama", "Romance"),
    ("Drama", "War"),
    ("Drama", "Crime"),
    ("Crime", "Thriller"),
    ("Crime", "Film-Noir"),
    ("Film-Noir", "Mystery"),
    ("Film-Noir", "Thriller"),
    ("Mystery", "Thriller"),
    ("Horror", "Thriller"),
    ("Horror", "Sci-Fi"),
    ("Musical", "Romance"),
    ("Romance", "Thriller"),
)
# ML-100k's share of ratings 1, 2, 3, 4, 5 (mean 3.53; 55.4% are 4 or 5).
ML100K_RATING_PROBS: tuple[float, float, float, float, float] = (0.061, 0.114, 0.271, 0.342, 0.212)
# ML-100k's first rating: 1997-09-20 03:05:10 UTC; the data spans 214.8 days.
ML100K_START = 874_724_710

_ADJ: dict[str, tuple[str, ...]] = {
    "Action": ("Deadly", "Maximum", "Hard", "Lethal", "Rapid", "Explosive", "Final"),
    "Adventure": ("Lost", "Hidden", "Wild", "Distant", "Golden", "Forgotten"),
    "Animation": ("Little", "Magic", "Tiny", "Colorful", "Bouncing", "Toon"),
    "Children's": ("Friendly", "Little", "Happy", "Brave", "Lucky", "Furry"),
    "Comedy": ("Crazy", "Nutty", "Wacky", "Funny", "Silly", "Dumb", "Awkward"),
    "Crime": ("Dirty", "Crooked", "Cold", "Criminal", "Bent", "Hot"),
    "Documentary": ("True", "Real", "Untold", "Inside", "Unfinished"),
    "Drama": ("Quiet", "Broken", "Lasting", "Bitter", "Tender", "Distant", "Fragile"),
    "Fantasy": ("Enchanted", "Mystic", "Dragon's", "Elven", "Sorcerer's", "Faerie"),
    "Film-Noir": ("Dark", "Shadowed", "Smoky", "Double", "Midnight", "Naked"),
    "Horror": ("Bloody", "Haunted", "Evil", "Cursed", "Undead", "Hungry", "Wicked"),
    "Musical": ("Singing", "Dancing", "Rhythmic", "Merry", "Swinging", "Jazzy"),
    "Mystery": ("Missing", "Secret", "Strange", "Unseen", "Vanishing", "Silent"),
    "Romance": ("Sweet", "Endless", "Sleepless", "Forbidden", "Tender", "Passionate"),
    "Sci-Fi": ("Galactic", "Cyber", "Alien", "Quantum", "Robotic", "Stellar", "Orbital"),
    "Thriller": ("Fatal", "Silent", "Desperate", "Sudden", "Perfect", "Blind"),
    "War": ("Fallen", "Brave", "Iron", "Last", "Bloody", "Distant"),
    "Western": ("Dusty", "Lone", "Wild", "Outlaw", "High", "Rawhide"),
}
_NOUN: dict[str, tuple[str, ...]] = {
    "Action": ("Strike", "Fury", "Target", "Bullet", "Vendetta", "Impact", "Force", "Showdown", "Getaway"),
    "Adventure": ("Quest", "Treasure", "Island", "Expedition", "Journey", "Temple", "Voyage", "Jungle"),
    "Animation": ("Critters", "Kingdom", "Pals", "Doodles", "Toys", "Bunny", "Caterpillar"),
    "Children's": ("Puppy", "Kids", "Pony", "Treehouse", "Friends", "Summer Camp", "Kitten"),
    "Comedy": ("Wedding", "Party", "Trouble", "Mixup", "Weekend", "Roommates", "Vacation", "Neighbors"),
    "Crime": ("Heist", "Score", "Mob", "Racket", "Killer", "Street", "Job", "Cop"),
    "Documentary": ("Story", "Chronicles", "Portrait", "Lives", "Record", "Facts", "Frontline"),
    "Drama": ("Promise", "Family", "Silence", "Letters", "Season", "Heart", "Memory", "Homecoming"),
    "Fantasy": ("Sword", "Wizard", "Realm", "Spell", "Prophecy", "Crown", "Unicorn"),
    "Film-Noir": ("Alley", "Dame", "Cross", "City", "Rain", "Detour", "Kiss"),
    "Horror": ("Night", "Nightmare", "Scream", "Terror", "Graveyard", "Creature", "Massacre", "Hunger"),
    "Musical": ("Melody", "Song", "Ballroom", "Chorus", "Rhapsody", "Stage", "Serenade"),
    "Mystery": ("Clue", "Case", "Riddle", "Witness", "Puzzle", "Disappearance", "Key"),
    "Romance": ("Love", "Kiss", "Romance", "Valentine", "Bride", "Affair", "Sweetheart"),
    "Sci-Fi": ("Planet", "Star", "Galaxy", "Android", "Invasion", "Orbit", "Future", "Clone"),
    "Thriller": ("Conspiracy", "Pursuit", "Ransom", "Trap", "Hostage", "Deadline", "Stranger"),
    "War": ("Battle", "Soldier", "Platoon", "Front", "Beachhead", "Regiment", "Valor", "Convoy"),
    "Western": ("Rider", "Frontier", "Gunslinger", "Ranch", "Sheriff", "Canyon", "Saddle", "Posse"),
}
_GENERIC_ADJ = ("Last", "First", "Great", "Long", "Big", "American", "Second", "Little", "Lonely", "Blue")
_GENERIC_NOUN = ("Man", "Day", "Road", "House", "City", "Time", "World", "Summer", "Woman", "Game", "Brothers")
_PLOT: dict[str, tuple[str, ...]] = {
    "Action": ("relentless chases and explosive set pieces", "a lone hero against impossible odds"),
    "Adventure": ("a perilous journey to uncharted lands", "a hunt for a legendary treasure"),
    "Animation": ("hand-drawn animation full of colour", "talking animals and bright songs"),
    "Children's": ("a heart-warming tale for the whole family", "kids who save the day"),
    "Comedy": ("misunderstandings that spiral out of control", "wall-to-wall gags and one-liners"),
    "Crime": ("a meticulously planned heist gone wrong", "cops and gangsters on the city streets"),
    "Documentary": ("real footage and candid interviews", "the true story behind the headlines"),
    "Drama": ("a family torn apart by old secrets", "a moving portrait of ordinary lives"),
    "Fantasy": ("wizards, dragons and an ancient prophecy", "a magical realm in peril"),
    "Film-Noir": ("a cynical detective and a dangerous dame", "shadows, rain and betrayal"),
    "Horror": ("a terror that stalks the night", "a haunted house with a gruesome past"),
    "Musical": ("show-stopping song and dance numbers", "a chorus line chasing stardom"),
    "Mystery": ("a baffling puzzle with a twist ending", "a detective following a trail of clues"),
    "Romance": ("two strangers falling in love", "a love story against all odds"),
    "Sci-Fi": ("an alien invasion from a distant galaxy", "a future ruled by machines"),
    "Thriller": ("a race against the clock", "a conspiracy that reaches the top"),
    "War": ("soldiers under fire on the front line", "courage and sacrifice in wartime"),
    "Western": ("gunslingers on the dusty frontier", "a showdown at high noon"),
}
_TONE = ("gripping", "gentle", "offbeat", "stylish", "sprawling", "intimate", "uneven", "acclaimed", "cult", "lavish")
_FIRST = ("John", "Mary", "Robert", "Susan", "James", "Linda", "Michael", "Karen", "David", "Laura", "Peter", "Anne")
_LAST = ("Smith", "Baker", "Hill", "Carter", "Moreno", "Kowalski", "Chen", "Dubois", "Novak", "Reyes", "Lund")


@dataclass(frozen=True)
class SynthConfig:
    """Size, seed and realism knobs of the generator (defaults give ~100k ratings, ML-100k-like)."""

    n_users: int = 1000
    n_items: int = 2000
    mean_ratings_per_user: float = 100.0
    min_ratings_per_user: int = 20
    seed: int = 0
    # Timeline.
    start_timestamp: int = ML100K_START
    span_days: float = 215.0
    # Items.
    new_item_frac: float = 0.2  # released during the timeline; the rest is back catalog
    max_genres: int = 3
    # Latent tastes.
    latent_dim: int = 24
    genre_alignment: float = 0.6  # share of latent variance explained by genres
    # Exposure / popularity.
    popularity_sigma: float = 1.6  # log-normal spread of base exposure
    quality_popularity_corr: float = 0.6
    ageing_years: float = 1.0  # exposure ~ (1 + age / ageing_years) ** -ageing_power
    ageing_power: float = 0.5
    hype_median: float = 3.0  # exposure multiplier right after release (median item)
    hype_sigma: float = 0.7
    hype_decay_days: float = 21.0
    # Category waves (shifts in what is popular): std over the timeline of a genre's log exposure factor (0: off),
    # and the range of the periods (days) of the sinusoids the waves are made of.
    genre_wave: float = 0.5
    genre_wave_days: tuple[float, float] = (45.0, 365.0)
    # Choice.
    choice_temperature: float = 0.6  # divides affinity in the choice log-weight
    choice_quality_weight: float = 0.3
    run_length: float = 6.0  # mean length of a run (a block of choices sharing time and genre focus)
    run_focus_prob: float = 0.7  # share of runs that explore one genre
    run_stay_prob: float = 0.5  # chance that a focused run keeps the previous run's genre
    run_focus_bonus: float = 1.2  # log-weight bonus for the focus genre's items
    taste_drift: float = 0.6  # size of the taste change over a whole history, relative to the taste
    # Activity.
    ratings_sigma: float = 1.1  # log-normal spread of ratings per user (before the cut at the minimum)
    max_user_frac: float = 0.4  # no user rates more than this share of the catalog
    extra_sessions_mean: float = 0.8
    first_session_weight: float = 4.0  # Dirichlet weight of the first session vs 1.0 for each later one
    event_gap_seconds: float = 20.0  # median gap between two ratings of a session
    # Users returning after a long break: probability, break after the last activity (days, uniform), and the
    # expected share of the user's ratings made at the return.
    return_prob: float = 0.3
    return_gap_days: tuple[float, float] = (30.0, 120.0)
    return_share: float = 0.1
    # Rating values.
    user_bias_sigma: float = 0.3
    rating_quality_weight: float = 0.8
    rating_affinity_weight: float = 0.8
    rating_noise: float = 0.7
    rating_probs: tuple[float, float, float, float, float] = ML100K_RATING_PROBS


@dataclass(frozen=True)
class _Items:
    """The catalog's hidden variables (index = product number - 1)."""

    genres: np.ndarray  # (n_items, n_genres) bool
    genre_lists: list[list[int]]  # genre indices per item, main genre first
    release: np.ndarray  # (n_items,) int64 epoch seconds
    quality: np.ndarray  # (n_items,) float
    log_base: np.ndarray  # (n_items,) log base exposure
    hype: np.ndarray  # (n_items,) hype amplitude
    factors: np.ndarray  # (n_items, latent_dim)
    genre_wave: np.ndarray  # (n_days, n_genres) log exposure factor per genre, day d = [start + d, start + d + 1)
    item_wave: np.ndarray  # (n_days, n_items) log exposure factor per item (mean over its genres)


@dataclass(frozen=True)
class _Users:
    """The users' hidden variables (index = user number - 1)."""

    genre_taste: np.ndarray  # (n_users, n_genres)
    genre_drift: np.ndarray  # (n_users, n_genres)
    affinity0: np.ndarray  # (n_users, n_items) standardised affinity at the start of each history
    affinity_drift: np.ndarray  # (n_users, n_items) change of affinity over the whole history
    bias: np.ndarray  # (n_users,)
    n_ratings: np.ndarray  # (n_users,) int


def _validate(c: SynthConfig) -> None:
    """Reject configurations the generator cannot honour."""
    if c.n_users < 1 or c.n_items < 10:
        raise ValueError("need at least 1 user and 10 items")
    cap = int(c.max_user_frac * c.n_items)
    if not 0 < c.max_user_frac <= 1 - c.new_item_frac or not 0 <= c.new_item_frac < 1:
        raise ValueError("need 0 <= new_item_frac < 1 and 0 < max_user_frac <= 1 - new_item_frac")
    if c.min_ratings_per_user < 1 or c.min_ratings_per_user > cap:
        raise ValueError(f"min_ratings_per_user must be in 1..{cap} (max_user_frac * n_items)")
    if not c.min_ratings_per_user < c.mean_ratings_per_user < cap:
        raise ValueError(f"mean_ratings_per_user must lie strictly between min_ratings_per_user and {cap}")
    if len(c.rating_probs) != 5 or abs(sum(c.rating_probs) - 1) > 1e-6 or min(c.rating_probs) <= 0:
        raise ValueError("rating_probs: five positive shares summing to 1")
    if not 1 <= c.max_genres <= 4 or c.latent_dim < 2 or c.span_days <= 1:
        raise ValueError("need 1 <= max_genres <= 4, latent_dim >= 2, span_days > 1")
    if c.genre_wave < 0 or not 0 < c.genre_wave_days[0] <= c.genre_wave_days[1]:
        raise ValueError("need genre_wave >= 0 and 0 < genre_wave_days[0] <= genre_wave_days[1]")
    if not 0 <= c.return_prob <= 1 or not 0 < c.return_share <= 0.5:
        raise ValueError("need 0 <= return_prob <= 1 and 0 < return_share <= 0.5")
    if not 0 < c.return_gap_days[0] <= c.return_gap_days[1]:
        raise ValueError("need 0 < return_gap_days[0] <= return_gap_days[1]")


def _make_items(c: SynthConfig, rng: np.random.Generator) -> _Items:
    """Genres, release times, quality, popularity, hype and latent factors of the catalog."""
    n, n_g = c.n_items, len(GENRES)
    prev = np.asarray(GENRE_COUNTS, dtype=float)
    prev /= prev.sum()
    pair = np.ones((n_g, n_g))
    idx = {g: i for i, g in enumerate(GENRES)}
    for a, b in GENRE_PAIRS:
        pair[idx[a], idx[b]] = pair[idx[b], idx[a]] = 8.0
    # Number of genres: ML-100k has ~1.7 genres per movie.
    k_probs = np.array([0.5, 0.33, 0.14, 0.03])[: c.max_genres]
    ks = rng.choice(np.arange(1, c.max_genres + 1), size=n, p=k_probs / k_probs.sum())
    # Main genre by ML prevalence; further genres by prevalence x co-occurrence with the genres already chosen.
    main = rng.choice(n_g, size=n, p=prev)
    genres = np.zeros((n, n_g), dtype=bool)
    genre_lists: list[list[int]] = []
    for i in range(n):
        chosen = [int(main[i])]
        w = prev * pair[main[i]]
        for _ in range(int(ks[i]) - 1):
            w = w.copy()
            w[chosen] = 0.0
            g = int(rng.choice(n_g, p=w / w.sum()))
            chosen.append(g)
            w *= pair[g]
        genres[i, chosen] = True
        genre_lists.append(chosen)

    # Release times: a back catalog (skewed recent, plus classics) and items released during the timeline.
    start, span = c.start_timestamp, c.span_days * DAY
    is_new = np.zeros(n, dtype=bool)
    is_new[rng.permutation(n)[: round(c.new_item_frac * n)]] = True  # exact count: the back catalog fits any user
    recent = rng.exponential(2.5, size=n)
    classic = rng.uniform(5.0, 60.0, size=n)
    age_years = np.where(rng.random(n) < 0.72, recent, classic) + rng.uniform(0.0, 0.1, size=n)
    release = np.where(
        is_new,
        start + rng.uniform(0.0, 0.95, size=n) * span,
        start - age_years * YEAR_DAYS * DAY,
    ).astype(np.int64)

    # Quality (old items still in the catalog are survivors: a bit better), popularity and hype.
    quality = rng.normal(0.0, 1.0, size=n) + 0.4 * ((~is_new) & (age_years > 10))
    rho = c.quality_popularity_corr
    pop_z = rho * quality + math.sqrt(1 - rho**2) * rng.normal(size=n)
    log_base = c.popularity_sigma * pop_z
    hype = c.hype_median * np.exp(c.hype_sigma * (0.6 * pop_z + 0.8 * rng.normal(size=n)))

    # Latent factors: genre embeddings mixed with idiosyncratic directions.
    d = c.latent_dim
    genre_emb = _genre_embeddings(c)
    mix = genres.astype(float) @ genre_emb
    mix /= np.linalg.norm(mix, axis=1, keepdims=True)
    own = rng.normal(size=(n, d)) / math.sqrt(d)
    factors = math.sqrt(c.genre_alignment) * mix + math.sqrt(1 - c.genre_alignment) * own

    # Category waves: per genre, three sinusoids (periods log-uniform in genre_wave_days, random phases and weights)
    # summed and standardised over the timeline; drawn last and whatever genre_wave is, so that the catalog and the
    # waves' shapes do not depend on their strength.
    n_days = math.ceil(c.span_days) + 1
    days = np.arange(n_days, dtype=float)
    lo, hi = c.genre_wave_days
    periods = np.exp(rng.uniform(math.log(lo), math.log(hi), size=(n_g, 3, 1)))
    phases = rng.uniform(0.0, 2 * math.pi, size=(n_g, 3, 1))
    weights = rng.uniform(0.5, 1.0, size=(n_g, 3, 1))
    curves = (weights * np.sin(2 * math.pi * days / periods + phases)).sum(axis=1)  # (n_g, n_days)
    curves -= curves.mean(axis=1, keepdims=True)
    curves /= curves.std(axis=1, keepdims=True) + 1e-12
    genre_wave = c.genre_wave * curves.T
    item_wave = genre_wave @ (genres / genres.sum(axis=1, keepdims=True)).T
    return _Items(genres, genre_lists, release, quality, log_base, hype, factors, genre_wave, item_wave)


def _day(c: SynthConfig, t: float, n_days: int) -> int:
    """Index of the timeline day holding epoch time ``t`` (clipped to the timeline)."""
    return min(max(int((t - c.start_timestamp) // DAY), 0), n_days - 1)


def log_exposure(c: SynthConfig, items: _Items, t: float) -> np.ndarray:
    """Log exposure of every item at epoch time ``t``: ageing, hype after release and the category waves
    (``-inf`` before release). The base popularity (``items.log_base``) is not included."""
    age = t - items.release.astype(float)
    released = age >= 0
    age = np.maximum(age, 0.0)
    exposure = (1.0 + age / (c.ageing_years * YEAR_DAYS * DAY)) ** -c.ageing_power + items.hype * np.exp(
        -age / (c.hype_decay_days * DAY)
    )
    out: np.ndarray = np.where(released, np.log(exposure) + items.item_wave[_day(c, t, len(items.item_wave))], -np.inf)
    return out


def _genre_embeddings(c: SynthConfig) -> np.ndarray:
    """Unit-norm latent direction per genre (derived from the seed only, shared by items and users)."""
    rng = np.random.default_rng([c.seed, 7_919])
    emb = rng.normal(size=(len(GENRES), c.latent_dim))
    out: np.ndarray = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    return out


def _make_users(c: SynthConfig, items: _Items, rng: np.random.Generator) -> _Users:
    """Genre tastes, latent tastes and their drift, biases and activity levels of the users."""
    n, n_g, d = c.n_users, len(GENRES), c.latent_dim
    prev = np.asarray(GENRE_COUNTS, dtype=float)
    prev /= prev.sum()
    # Genre taste: broad Gaussian likes/dislikes plus one to three favourite genres.
    taste = rng.normal(0.0, 1.0, size=(n, n_g))
    n_fav = rng.integers(1, 4, size=n)
    for u in range(n):
        fav = rng.choice(n_g, size=int(n_fav[u]), replace=False, p=np.sqrt(prev) / np.sqrt(prev).sum())
        taste[u, fav] += 1.5
    taste -= taste.mean(axis=1, keepdims=True)
    drift = rng.normal(0.0, 1.0, size=(n, n_g))
    genre_emb = _genre_embeddings(c)

    def latent(z: np.ndarray, own: np.ndarray) -> np.ndarray:
        g = z @ genre_emb
        g /= np.linalg.norm(g, axis=1, keepdims=True) + 1e-12
        out: np.ndarray = math.sqrt(c.genre_alignment) * g + math.sqrt(1 - c.genre_alignment) * own
        return out

    u0 = latent(taste, rng.normal(size=(n, d)) / math.sqrt(d))
    u_drift = c.taste_drift * latent(drift, rng.normal(size=(n, d)) / math.sqrt(d))
    raw0 = u0 @ items.factors.T
    scale = float(raw0.std()) or 1.0
    affinity0 = (raw0 - raw0.mean()) / scale
    affinity_drift = (u_drift @ items.factors.T) / scale

    n_ratings = _ratings_per_user(c, rng)
    bias = rng.normal(0.0, c.user_bias_sigma, size=n)
    return _Users(taste, c.taste_drift * drift, affinity0, affinity_drift, bias, n_ratings)


def _normal_mass(a: float, b: float) -> float:
    """``P(a <= Z <= b)`` for a standard normal ``Z``, accurate far out in either tail."""
    if a > 0:
        return 0.5 * (math.erfc(a / math.sqrt(2.0)) - math.erfc(b / math.sqrt(2.0)))
    return 0.5 * (math.erfc(-b / math.sqrt(2.0)) - math.erfc(-a / math.sqrt(2.0)))


def _lognormal_mu(mean: float, sigma: float, low: float, cap: float) -> float:
    """The ``mu`` with ``E[X | low <= X <= cap] == mean`` for ``X ~ LogNormal(mu, sigma)`` (bisection)."""
    la, lc = math.log(low), math.log(cap)

    def truncated_mean(mu: float) -> float:
        kept = _normal_mass((la - mu) / sigma, (lc - mu) / sigma)
        if kept <= 1e-300:
            return low if mu < la else cap
        body = _normal_mass((la - mu - sigma**2) / sigma, (lc - mu - sigma**2) / sigma)
        return math.exp(mu + sigma**2 / 2) * body / kept

    lo, hi = la - 10.0 * sigma, lc + 10.0 * sigma
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if truncated_mean(mid) < mean else (lo, mid)
    return (lo + hi) / 2


def _ratings_per_user(c: SynthConfig, rng: np.random.Generator) -> np.ndarray:
    """Log-normal activity cut at ``min_ratings_per_user`` (like ML's filter of light users) and at the cap.

    Sampled by inverting the truncated normal CDF on a fine grid (no rejection loop, whatever the truncation), one
    draw per quantile stratum so that the total number of ratings stays close to ``n_users * mean``.
    """
    low = c.min_ratings_per_user - 0.5  # rounding to an int keeps everything in min..cap
    cap = int(c.max_user_frac * c.n_items) + 0.49
    sigma = c.ratings_sigma
    mu = _lognormal_mu(c.mean_ratings_per_user, sigma, low, cap)
    za, zc = (math.log(low) - mu) / sigma, (math.log(cap) - mu) / sigma
    flip = za + zc > 0  # work in the lower tail, where the CDF is accurate
    lo_z, hi_z = (-zc, -za) if flip else (za, zc)
    grid = np.linspace(lo_z, hi_z, 4097)
    cdf = np.array([_normal_mass(-40.0, float(z)) for z in grid])
    strata = (rng.permutation(c.n_users) + rng.random(c.n_users)) / c.n_users  # stratified: total close to target
    z = np.interp(cdf[0] + strata * (cdf[-1] - cdf[0]), cdf, grid)
    z = -z if flip else z
    n = np.round(np.exp(mu + sigma * z)).astype(np.int64)
    clipped: np.ndarray = np.clip(n, c.min_ratings_per_user, int(c.max_user_frac * c.n_items))
    return clipped


def _user_timestamps(c: SynthConfig, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Strictly increasing timestamps of one user's ``n`` ratings, spread over one to a few sessions (plus maybe a
    return after a long break); also the positions where sessions start."""
    start, span = c.start_timestamp, c.span_days * DAY
    # A return after a long break: decided first, placed after the regular sessions if it fits the timeline.
    n_ret, ret_gap = 0, 0.0
    if n >= 4 and rng.random() < c.return_prob:
        n_ret = int(np.clip(rng.binomial(n, c.return_share), 1, n // 4))
        ret_gap = rng.uniform(*c.return_gap_days) * DAY
    n_main = n - n_ret
    extra = min(int(rng.poisson(c.extra_sessions_mean * math.sqrt(n / c.mean_ratings_per_user))), 7, n_main - 1)
    shares = rng.dirichlet([c.first_session_weight] + [1.0] * extra) if extra else np.ones(1)
    sizes = rng.multinomial(n_main - (extra + 1), shares) + 1
    # Gaps inside sessions: seconds to minutes, with the odd break.
    gaps = rng.lognormal(math.log(c.event_gap_seconds), 0.9, size=n) + 1.0
    gaps = np.where(rng.random(n) < 0.02, gaps + rng.uniform(600, 3600, size=n), gaps)
    # Gaps between sessions: a mix of "came back a few days later" and "came back weeks later".
    between = np.where(
        rng.random(extra) < 0.5, rng.lognormal(math.log(2.0), 0.6, extra), rng.lognormal(math.log(25.0), 0.8, extra)
    )
    while True:
        bounds = np.concatenate([[0], np.cumsum(sizes)])
        durations = np.array([gaps[bounds[s] : bounds[s + 1]].sum() for s in range(len(sizes))])
        offsets = np.concatenate([[0.0], np.cumsum(between[: len(sizes) - 1] * DAY + durations[:-1])])
        if len(sizes) == 1 or offsets[-1] + durations[-1] <= 0.98 * span:
            break
        # The last session does not fit the timeline: its ratings join the first session.
        sizes = np.concatenate([[sizes[0] + sizes[-1]], sizes[1:-1]])
    t0 = start + rng.uniform(0.0, max(0.98 * span - offsets[-1] - durations[-1], 0.0))
    ts = np.empty(n)
    for s in range(len(sizes)):
        seg = gaps[bounds[s] : bounds[s + 1]].copy()
        seg[0] = 0.0
        ts[bounds[s] : bounds[s + 1]] = t0 + offsets[s] + np.cumsum(seg)
    session_starts = bounds[:-1]
    if n_ret:
        seg = gaps[n_main:].copy()
        back = ts[n_main - 1] + ret_gap
        if back + seg[1:].sum() <= start + 0.98 * span:
            seg[0] = back - ts[n_main - 1]
            session_starts = np.append(session_starts, n_main)
        # else: the return falls after the timeline; those ratings continue the last session.
        ts[n_main:] = ts[n_main - 1] + np.cumsum(seg)
    return ts.astype(np.int64), session_starts  # gaps are >= 1 s, so strictly increasing


def _runs(c: SynthConfig, n: int, rng: np.random.Generator, breaks: np.ndarray) -> list[tuple[int, int]]:
    """Split positions 0..n-1 into consecutive runs ``(start, stop)`` of geometric lengths, also cut at ``breaks``
    (the positions where sessions start)."""
    lengths = rng.geometric(1.0 / c.run_length, size=n)
    stops = np.minimum(np.cumsum(lengths), n)
    stops = stops[: int(np.searchsorted(stops, n)) + 1]
    stops = np.union1d(stops, breaks[(breaks > 0) & (breaks < n)])
    starts = np.concatenate([[0], stops[:-1]])
    return [(int(a), int(b)) for a, b in zip(starts, stops, strict=True) if b > a]


def _simulate(
    c: SynthConfig, items: _Items, users: _Users, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Choose and time every user's ratings; return (user, item, timestamp, latent score) arrays."""
    n_items, n_g = c.n_items, len(GENRES)
    prev = np.asarray(GENRE_COUNTS, dtype=float)
    log_prev = np.log(prev / prev.sum())
    genre_bonus = items.genres.astype(float) * c.run_focus_bonus
    choice_static = items.log_base + c.choice_quality_weight * items.quality
    n_days = len(items.genre_wave)
    out_u: list[np.ndarray] = []
    out_i: list[np.ndarray] = []
    out_t: list[np.ndarray] = []
    out_s: list[np.ndarray] = []
    for u in range(c.n_users):
        n = int(users.n_ratings[u])
        ts, session_starts = _user_timestamps(c, n, rng)
        taken = np.zeros(n_items, dtype=bool)
        chosen = np.empty(n, dtype=np.int64)
        focus = -1
        for a, b in _runs(c, n, rng, session_starts):
            t = float(ts[a])
            frac = a / n
            log_exp = log_exposure(c, items, t)
            released = np.isfinite(log_exp)
            aff = users.affinity0[u] + frac * users.affinity_drift[u]
            logw = choice_static + np.where(released, log_exp, 0.0) + aff / c.choice_temperature
            if rng.random() < c.run_focus_prob:
                if focus < 0 or rng.random() >= c.run_stay_prob:
                    wave = items.genre_wave[_day(c, t, n_days)]
                    gz = users.genre_taste[u] + frac * users.genre_drift[u] + log_prev + wave
                    p = np.exp(gz - gz.max())
                    focus = int(rng.choice(n_g, p=p / p.sum()))
                logw = logw + genre_bonus[:, focus]
            open_ = released & ~taken
            key = np.where(open_, logw + rng.gumbel(size=n_items), -np.inf)
            k = b - a
            assert k <= np.count_nonzero(open_), "the back catalog always covers a user's ratings"
            top = np.argpartition(-key, k - 1)[:k]
            top = top[np.argsort(-key[top], kind="stable")]
            chosen[a:b] = top
            taken[top] = True
        pos = np.arange(n) / n
        aff_at = users.affinity0[u, chosen] + pos * users.affinity_drift[u, chosen]
        score = (
            users.bias[u]
            + c.rating_quality_weight * items.quality[chosen]
            + c.rating_affinity_weight * aff_at
            + rng.normal(0.0, c.rating_noise, size=n)
        )
        out_u.append(np.full(n, u, dtype=np.int64))
        out_i.append(chosen)
        out_t.append(ts)
        out_s.append(score)
    return np.concatenate(out_u), np.concatenate(out_i), np.concatenate(out_t), np.concatenate(out_s)


def _to_ratings(c: SynthConfig, score: np.ndarray) -> np.ndarray:
    """Cut latent scores into 1..5 at the quantiles that reproduce ``rating_probs``."""
    cuts = np.quantile(score, np.cumsum(c.rating_probs)[:-1])
    return (np.searchsorted(cuts, score, side="right") + 1).astype(np.int64)


def _year(ts: int) -> int:
    """Calendar year (UTC) of an epoch timestamp, negative ones included."""
    return (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(seconds=int(ts))).year


def _products(c: SynthConfig, items: _Items, rng: np.random.Generator) -> list[dict[str, Any]]:
    """Text records (title, description, genres, price) of the catalog."""

    def pick(seq: Sequence[str]) -> str:
        return seq[int(rng.integers(len(seq)))]

    products: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    for i in range(c.n_items):
        names = [GENRES[g] for g in items.genre_lists[i]]
        g1 = names[0]
        g2 = names[int(rng.integers(len(names)))]
        adj = pick(_ADJ[g1]) if rng.random() < 0.75 else pick(_GENERIC_ADJ)
        noun = pick(_NOUN[g2]) if rng.random() < 0.75 else pick(_GENERIC_NOUN)
        form = int(rng.integers(5))
        if form == 0:
            base = f"{adj} {noun}"
        elif form == 1:
            base = f"The {adj} {noun}"
        elif form == 2:
            base = f"{noun} of the {pick(_NOUN[g1])}"
        elif form == 3:
            base = f"The {noun}"
        else:
            base = f"{noun}: {adj} {pick(_NOUN[g2] + _GENERIC_NOUN)}"
        year = _year(int(items.release[i]))
        title = f"{base} ({year})"
        seen[title] = seen.get(title, 0) + 1
        if seen[title] > 1:
            title = f"{base} {_roman(seen[title])} ({year})"
        plots = [pick(_PLOT[g]) for g in names[:2]]
        genre_text = "/".join(g.lower() for g in names)
        tone = pick(_TONE)
        description = (
            f"{'An' if tone[0] in 'aeiou' else 'A'} {tone} {genre_text} film from {year} about {plots[0]}"
            + (f", with {plots[1]}" if len(plots) > 1 and plots[1] != plots[0] else "")
            + f". Starring {pick(_FIRST)} {pick(_LAST)} and {pick(_FIRST)} {pick(_LAST)}."
        )
        age_years = (c.start_timestamp - int(items.release[i])) / (YEAR_DAYS * DAY)
        tiers = (14.99, 19.99, 24.99) if age_years < 1 else (4.99, 7.99, 9.99, 12.99)
        products.append(
            {
                "product_id": f"m{i + 1}",
                "title": title,
                "description": description,
                "category": g1,
                "price": float(tiers[int(rng.integers(len(tiers)))]),
                "genres": "|".join(names),
            }
        )
    return products


def _roman(k: int) -> str:
    """Sequel numbering: 2 -> 'II', 4 -> 'IV', ..."""
    numerals = ((10, "X"), (9, "IX"), (5, "V"), (4, "IV"), (1, "I"))
    out = ""
    for value, sym in numerals:
        while k >= value:
            out += sym
            k -= value
    return out


@dataclass(frozen=True)
class Simulation:
    """The ground truth behind a generated data set (for tests and diagnostics); events in output order."""

    items: _Items
    users: _Users
    user: np.ndarray  # (n_events,) user index (``u{index + 1}``)
    item: np.ndarray  # (n_events,) item index (``m{index + 1}``)
    timestamp: np.ndarray  # (n_events,) epoch seconds, non-decreasing
    value: np.ndarray  # (n_events,) rating 1..5


def _streams(seed: int) -> list[np.random.Generator]:
    """Independent random streams for items, users, events and text."""
    return [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(4)]


def simulate(config: SynthConfig = SynthConfig()) -> Simulation:
    """Run the generative model and return its arrays (``generate`` turns them into records)."""
    _validate(config)
    rng_items, rng_users, rng_events, _ = _streams(config.seed)
    items = _make_items(config, rng_items)
    users = _make_users(config, items, rng_users)
    uu, ii, tt, score = _simulate(config, items, users, rng_events)
    values = _to_ratings(config, score)
    order = np.lexsort((np.arange(len(uu)), uu, tt))
    return Simulation(items, users, uu[order], ii[order], tt[order], values[order])


def generate(config: SynthConfig = SynthConfig()) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Return (products, events).

    products: ``{"product_id": "m123", "title", "description", "category": <main genre>, "price": float,
    "genres": "Action|Comedy"}`` (text-only items: no image).
    events: ``{"user_id": "u45", "product_id": "m123", "event_type": "rating", "value": 1..5, "timestamp": int}``,
    sorted by timestamp (each user's ratings in the order they were made).
    """
    sim = simulate(config)
    events = [
        {"user_id": f"u{u + 1}", "product_id": f"m{i + 1}", "event_type": "rating", "value": v, "timestamp": t}
        for u, i, v, t in zip(
            sim.user.tolist(), sim.item.tolist(), sim.value.tolist(), sim.timestamp.tolist(), strict=True
        )
    ]
    return _products(config, sim.items, _streams(config.seed)[3]), events


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> None:
    """Write ``rows`` as JSON lines (UTF-8), creating parent folders."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with p.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def gini(counts: np.ndarray) -> float:
    """Gini coefficient of non-negative counts (0: all equal, ->1: concentrated)."""
    x = np.sort(np.asarray(counts, dtype=float))
    if x.sum() == 0:
        return 0.0
    n = len(x)
    return float((2 * np.arange(1, n + 1) - n - 1).dot(x) / (n * x.sum()))


def summarize(products: list[dict[str, Any]], events: list[dict[str, Any]]) -> dict[str, float]:
    """Headline statistics of a generated (or real) data set, for comparison with ML-100k."""
    users = np.array([int(e["user_id"][1:]) for e in events])
    items = np.array([int(e["product_id"][1:]) for e in events])
    values = np.array([e["value"] for e in events], dtype=float)
    ts = np.array([e["timestamp"] for e in events], dtype=np.int64)
    per_user = np.bincount(users)[np.unique(users)]
    per_item = np.bincount(items, minlength=len(products) + 1)[1:]
    top = np.sort(per_item)[::-1][: max(1, len(per_item) // 10)]
    # Share of each user's ratings made within 3 days of the user's first rating.
    order = np.lexsort((ts, users))
    u_sorted, t_sorted = users[order], ts[order]
    starts = np.r_[0, np.flatnonzero(np.diff(u_sorted)) + 1]
    first = np.repeat(t_sorted[starts], np.diff(np.r_[starts, len(t_sorted)]))
    return {
        "users": float(len(per_user)),
        "items": float(len(products)),
        "ratings": float(len(events)),
        "rating_mean": float(values.mean()),
        "share_ge4": float((values >= 4).mean()),
        "item_gini": gini(per_item),
        "top10pct_item_share": float(top.sum() / per_item.sum()),
        "unrated_items": float((per_item == 0).sum()),
        "per_user_min": float(per_user.min()),
        "per_user_median": float(np.median(per_user)),
        "per_user_p95": float(np.percentile(per_user, 95)),
        "per_user_max": float(per_user.max()),
        "span_days": float((ts.max() - ts.min()) / DAY),
        "share_within_3d_of_first": float(((t_sorted - first) <= 3 * DAY).mean()),
    }


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """The CLI flags (shared by this module's ``main`` and ``python -m local synth-ratings``)."""
    ap.add_argument("--out", type=Path, required=True, help="output folder")
    ap.add_argument("--users", type=int, default=SynthConfig.n_users)
    ap.add_argument("--items", type=int, default=SynthConfig.n_items)
    ap.add_argument("--seed", type=int, default=SynthConfig.seed)
    ap.add_argument("--mean-ratings", type=float, default=SynthConfig.mean_ratings_per_user, help="per user")
    ap.add_argument("--min-ratings", type=int, default=SynthConfig.min_ratings_per_user, help="per user")


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: write products.jsonl and events.jsonl into --out and print a one-line summary."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    add_arguments(ap)
    return run(ap.parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """Generate and write the data for parsed :func:`add_arguments` flags."""
    t0 = time.perf_counter()
    config = SynthConfig(
        n_users=args.users,
        n_items=args.items,
        mean_ratings_per_user=args.mean_ratings,
        min_ratings_per_user=args.min_ratings,
        seed=args.seed,
    )
    products, events = generate(config)
    write_jsonl(args.out / "products.jsonl", products)
    write_jsonl(args.out / "events.jsonl", events)
    s = summarize(products, events)
    print(
        f"{int(s['users'])} users, {int(s['items'])} items, {int(s['ratings'])} ratings; "
        f"mean {s['rating_mean']:.2f}, >=4 {s['share_ge4']:.1%}; item gini {s['item_gini']:.2f}, "
        f"top-10% items {s['top10pct_item_share']:.1%}; per user median {s['per_user_median']:.0f} "
        f"p95 {s['per_user_p95']:.0f} min {s['per_user_min']:.0f}; span {s['span_days']:.0f} days; "
        f"{time.perf_counter() - t0:.1f}s -> {args.out}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
