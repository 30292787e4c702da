"""Opening a video file and indexing it: which stream is the video, every frame's timestamp, and the damage checks.

Opening (:func:`open_container`) is PyAV's ``av.open`` with metadata that is not UTF-8 (Latin-1 titles and handler
names from older cameras) decoded with replacement characters, as players show it; any failure to open names the file.

The video stream is FFmpeg's best-stream choice (``av_find_best_stream``): attached pictures (cover art) are never
the video, so an audio file with cover art has no video stream; among the others a stream of more than one frame
wins over a still picture, then the default stream (not one for the hearing or visually impaired), then the stream
with more frames (counted up to 5, as FFmpeg's probe counts them), then the higher bit rate, then the first.

Indexing (:func:`demux_video`) reads every packet of the file once (no decoding). Packets the container marks to be
discarded (before an MP4 edit list's start: decoded only as references, never shown) are not frames: frame ``i`` is
the ``i``-th frame a player shows. The damage checks compare like with like: the packets (discarded ones included)
with the header's count of stored packets (MP4, MOV; AVI's count includes the empty chunks FFmpeg skips), and the
packets' end time with the end the header declares on the same timeline (a stream that starts after 0, as
segments, live recordings and cut files do, is not short for it).
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from .errors import RuntimeInputError
from .frames import natural_key

logger = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm")


@dataclass(frozen=True)
class VideoInfo:
    """What opening a video found out (demuxing, and decoding its first frame for the display matrix).

    Attributes:
        path (str): the file.
        container (str): FFmpeg's demuxer name ("mov,mp4,m4a,3gp,3g2,mj2", "matroska,webm", "avi", ...).
        codec (str): the video codec ("h264", "mpeg4", "vp9", ...).
        stream_index (int): the container's stream that is the video (see the module docstring).
        width (int): frame width in pixels as displayed (after the display matrix's rotation).
        height (int): frame height in pixels as displayed.
        rotation (int): the display matrix's rotation in degrees, counterclockwise, as ``ffprobe`` reports it (0:
            none); frames are turned (and mirrored) as players turn them (:mod:`runtime.video_display`).
        mirrored (bool): the display matrix mirrors the picture.
        num_frames (int): frames a player shows, N (packets, less those marked to be discarded).
        fps (float): average frame rate, frames / duration (0.0 when unknown).
        duration_s (float): presentation time from the first frame to the end of the last.
        variable_frame_rate (bool): the frame intervals differ (sampling still goes by frame index).
        seekable (bool): reads seek to the keyframe before a target (else they decode from the start); turned off in
            the index when a seek proves unreliable.
        keyframes (int): keyframes among the frames.
    """

    path: str
    container: str
    codec: str
    stream_index: int
    width: int
    height: int
    rotation: int
    mirrored: bool
    num_frames: int
    fps: float
    duration_s: float
    variable_frame_rate: bool
    seekable: bool
    keyframes: int

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass(frozen=True, eq=False)
class VideoIndex:
    """What opening a video found: its :class:`VideoInfo` and every frame's timestamp and keyframe flag, in
    presentation order (about 17 bytes a frame). A reader makes one when it opens a video (``VideoReader.index``)
    and records there what reading taught it (a seek that proved unreliable); a reader given it opens the same file
    without demuxing it again (training opens a video for every clip it reads). It belongs to the file as it was: a
    reader given the index of a file that has changed since (size or modification time) demuxes it again.

    Attributes:
        info (VideoInfo): the video.
        pts (np.ndarray | None): int64 ``(N,)`` timestamps in the stream's time base, ascending (None: no unique
            timestamps, so frames are counted in decoding order).
        keyframes (np.ndarray | None): bool ``(N,)``, with ``pts``.
        times_s (np.ndarray): float64 ``(N,)`` presentation time of each frame from the first, in seconds.
        file_stamp (tuple[int, int]): the file's size in bytes and modification time in ns when it was demuxed.
    """

    info: VideoInfo
    pts: Optional[np.ndarray]
    keyframes: Optional[np.ndarray]
    times_s: np.ndarray
    file_stamp: tuple[int, int]

    def describes(self, path: Path) -> bool:
        """The index was made from ``path`` as it is now."""
        return Path(self.info.path) == path and self.file_stamp == file_stamp(path)

    def learned(self, **info: object) -> "VideoIndex":
        """A copy whose :class:`VideoInfo` has the fields ``info`` changed (what reading the video found out)."""
        return dataclasses.replace(self, info=dataclasses.replace(self.info, **info))


def file_stamp(path: Path) -> tuple[int, int]:
    st = path.stat()
    return int(st.st_size), int(st.st_mtime_ns)


def check_video_path(path: str | os.PathLike) -> Path:
    """``path`` as a :class:`Path` when it names a regular file with a video suffix.

    Raises:
        RuntimeInputError: another suffix, a missing file, a broken symbolic link or a loop of them, or not a file.
    """
    path = Path(path)
    if path.suffix.lower() not in VIDEO_SUFFIXES:
        raise RuntimeInputError(f"{path}: {path.suffix or 'no suffix'} is not a video container this reader opens; "
                                f"valid suffixes: {', '.join(VIDEO_SUFFIXES)}")
    try:
        mode = path.stat().st_mode
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise RuntimeInputError(f"{path} is a loop of symbolic links (it never reaches a file)") from e
        if path.is_symlink():
            raise RuntimeInputError(f"{path} is a broken symbolic link (to {os.readlink(path)})") from e
        raise RuntimeInputError(f"{path} does not exist ({e.strerror})") from e
    if not stat.S_ISREG(mode):
        raise RuntimeInputError(f"{path} is not a file")
    return path


def list_videos(folder: str | os.PathLike) -> list[Path]:
    """The entries directly in ``folder`` with a video suffix (``VIDEO_SUFFIXES``, case-insensitive), not hidden and
    not folders, in natural name order (``2.mp4`` before ``10.mp4``). Broken symbolic links and loops of them are
    listed, so that opening them says what they are instead of their being left out unseen."""
    return sorted((p for p in Path(folder).iterdir()
                   if not p.name.startswith(".") and p.suffix.lower() in VIDEO_SUFFIXES and not p.is_dir()),
                  key=lambda p: natural_key(p.name))


def ffmpeg_errors() -> tuple:
    import av

    return (av.error.FFmpegError, OSError, EOFError)


def reason(e: BaseException) -> str:
    return f"{type(e).__name__}: {getattr(e, 'strerror', None) or e}"


def open_container(path: Path):
    """``av.open`` for reading, metadata that is not UTF-8 decoded with replacement characters.

    Raises:
        RuntimeInputError: naming ``path``, for any failure to open it.
    """
    import av

    try:
        return av.open(str(path), metadata_errors="replace")
    except Exception as e:  # whatever FFmpeg or PyAV make of a damaged file, the message names it
        raise RuntimeInputError(f"{path} cannot be opened as a video (unknown container, damaged, or truncated): "
                                f"FFmpeg says {reason(e)}") from e


def _video_candidates(container, path: Path) -> list:
    """The video streams that may be the video: every one but attached pictures (cover art)."""
    import av

    pic = av.stream.Disposition.attached_pic
    candidates = [s for s in container.streams.video if not s.disposition & pic]
    if not candidates:
        kinds = sorted({"attached picture" if s.type == "video" else s.type for s in container.streams})
        raise RuntimeInputError(f"{path} has no video stream (its streams: {', '.join(kinds) or 'none'})")
    return candidates


def _best_stream(candidates: list, counts: dict[int, int]):
    """FFmpeg's ``av_find_best_stream`` order, a still picture (one frame, or flagged still) last."""
    import av

    D = av.stream.Disposition
    impaired = D.hearing_impaired | D.visual_impaired
    still = getattr(D, "still_image", 0)  # FFmpeg 6.1's flag; older PyAV builds lack it

    def rank(s) -> tuple:
        n = counts[s.index]
        moving = n > 1 and not s.disposition & still
        disposition = (not s.disposition & impaired) + bool(s.disposition & D.default)
        return moving, disposition, min(5, n), s.codec_context.bit_rate or 0, n

    return max(candidates, key=rank)  # max keeps the first of equals, as FFmpeg does


def _read_packets(container, candidates: list, path: Path) -> dict[int, list[tuple]]:
    """``(pts, dts, duration, keyframe, discard, corrupt)`` of every packet, per candidate stream index."""
    packets: dict[int, list[tuple]] = {s.index: [] for s in candidates}
    try:
        for p in container.demux(*candidates):
            if p.size == 0 and p.pts is None:  # the flush packet at the end of each stream
                continue
            packets[p.stream.index].append((p.pts, p.dts, p.duration, bool(p.is_keyframe), bool(p.is_discard),
                                            bool(p.is_corrupt)))
    except ffmpeg_errors() as e:
        done = sum(len(v) for v in packets.values())
        raise RuntimeInputError(f"{path} is damaged: demuxing stopped after {done} packets: {reason(e)}") from e
    return packets


def demux_video(path: Path, stamp: tuple[int, int]) -> VideoIndex:
    """Choose the video stream, read every packet of the file (no decoding), check for damage and index the frames.

    The index's width and height are the coded ones and its rotation 0: the reader learns the display matrix from
    the first decoded frame (``VideoIndex.learned``).

    Raises:
        RuntimeInputError: naming ``path``: it cannot be opened, has no video stream, no frames, or is damaged or
            truncated (see the module docstring).
    """
    container = open_container(path)
    try:
        candidates = _video_candidates(container, path)
        packets = _read_packets(container, candidates, path)
        stream = _best_stream(candidates, {i: len(v) for i, v in packets.items()})
        return _index(path, container, stream, packets[stream.index], stamp)
    finally:
        container.close()


def _declared_end(stream, container) -> Optional[float]:
    """Where the header says the video ends, in seconds on the stream's own timeline (None: it does not say).

    MP4 and AVI give the stream's duration from its start time; Matroska's DURATION tag and its segment duration are
    the end timestamp itself; a container's duration is used when the video is its only stream."""
    tb = stream.time_base
    if stream.duration is not None and tb is not None:
        return float(((stream.start_time or 0) + stream.duration) * tb)
    tag = (stream.metadata or {}).get("DURATION")
    if tag:
        try:
            h, m, s = tag.split(":")
            return int(h) * 3600 + int(m) * 60 + float(s)
        except ValueError:
            pass
    if container.duration is not None and len(container.streams) == 1:
        return container.duration / 1_000_000
    return None


def _check_damage(path: Path, stream, container, packets: list[tuple], kept: list[tuple]) -> None:
    n = len(kept)
    if n == 0:
        raise RuntimeInputError(f"{path} has a video stream but no frames")
    corrupt = sum(p[5] for p in kept)
    if corrupt:
        raise RuntimeInputError(f"{path} is damaged: {corrupt} of its {n} frames are flagged corrupt by the demuxer "
                                "(truncated or overwritten data)")
    # The header's frame count is a count of stored packets, discarded ones too (MP4, MOV); AVI's counts the empty
    # chunks that stand for a repeated frame (FFmpeg skips them, and writes them for a start offset), so AVI is
    # checked by its end time alone.
    if stream.frames and len(packets) < stream.frames and "avi" not in container.format.name.split(","):
        raise RuntimeInputError(f"{path} is truncated or damaged: its header declares {stream.frames} frames, but "
                                f"only {len(packets)} can be read")
    declared = _declared_end(stream, container)
    if declared is None or stream.time_base is None or any(p[0] is None for p in kept):
        return
    tb = float(stream.time_base)
    first = min(p[0] for p in kept) * tb
    end = max(p[0] + (p[2] or 0) for p in kept) * tb
    span = end - first
    if span > 0 and end < declared - max(0.05 * (declared - first), 2 * span / n):
        raise RuntimeInputError(f"{path} is truncated or damaged: its header declares video up to {declared:.3f} s, "
                                f"but its {n} readable frames end at {end:.3f} s")


def _index(path: Path, container, s, packets: list[tuple], stamp: tuple[int, int]) -> VideoIndex:
    kept = [p for p in packets if not p[4]]  # discarded packets are references, never shown: not frames
    _check_damage(path, s, container, packets, kept)
    n = len(kept)
    pts = [p[0] for p in kept]
    tb = float(s.time_base) if s.time_base is not None else 0.0
    rate = float(s.average_rate or 0)
    seekable = None not in pts and len(set(pts)) == n
    sorted_pts = key = None
    if seekable:
        order = np.argsort(np.asarray(pts, np.int64), kind="stable")
        sorted_pts = np.asarray(pts, np.int64)[order]
        key = np.asarray([p[3] for p in kept], bool)[order]
        first = int(sorted_pts[0])
        times = (sorted_pts - first) * tb
        end = max(p[0] + (p[2] or 0) for p in kept)
        duration = (end - first) * tb if tb else 0.0
        deltas = np.diff(sorted_pts)
        vfr = bool(len(deltas) > 1 and deltas.max() - deltas.min() > max(1, 0.1 * float(np.median(deltas))))
    else:  # frames are counted in decoding order, spread evenly over the packets' span (or the average rate)
        if None not in pts and tb:
            duration = (max(p[0] + (p[2] or 0) for p in kept) - min(pts)) * tb
        else:
            duration = n / rate if rate else 0.0
        times, vfr = np.arange(n) * (duration / n), False
    cc = s.codec_context
    info = VideoInfo(
        path=str(path), container=container.format.name, codec=cc.name, stream_index=int(s.index),
        width=int(cc.width), height=int(cc.height), rotation=0, mirrored=False, num_frames=n,
        fps=round(n / duration, 6) if duration else rate, duration_s=round(float(duration), 6),
        variable_frame_rate=vfr, seekable=seekable, keyframes=int(sum(p[3] for p in kept)))
    return VideoIndex(info, sorted_pts, key, np.asarray(times, np.float64), stamp)
