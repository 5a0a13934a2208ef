"""The PNG plots people look at: matplotlib without a display."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def subplots(**kwargs):
    return plt.subplots(**kwargs)


def save(fig, path: str) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
