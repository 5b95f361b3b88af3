"""Image grids: layout, cell contents, what each grid shows, argument checks."""

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from cvae_exp import visualize
from cvae_exp.visualize import GRID_PADDING

CONFIGS = Path(__file__).parents[1] / "configs"
SIDE = 28
TINY_MLP = {"latent_dim": 4, "encoder": {"hidden_dims": [16]}, "decoder": {"hidden_dims": [16]}}


def tiny_cvae(conditioning: str = "concat"):
    """A small MLP CVAE with its weights perturbed, so that FiLM's zero-initialised
    label embeddings (the identity at start) make the label matter too."""
    torch.manual_seed(0)
    cvae = instantiate(
        OmegaConf.merge(OmegaConf.load(CONFIGS / "model" / "mlp.yaml"), TINY_MLP),
        conditioning=instantiate(OmegaConf.load(CONFIGS / "conditioning" / f"{conditioning}.yaml")),
        image_shape=[1, SIDE, SIDE],
        num_classes=10,
    )
    with torch.no_grad():
        for parameter in cvae.parameters():
            parameter.add_(0.5 * torch.randn_like(parameter))
    return cvae


@pytest.fixture(scope="module")
def cvae():
    return tiny_cvae()


def images_of(labels: list[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(len(labels), 1, SIDE, SIDE, generator=generator), torch.tensor(labels)


def cells(grid: torch.Tensor, rows: int, columns: int) -> torch.Tensor:
    """The grid cut back into its images: (rows, columns, first channel of SIDE x SIDE)."""
    step = SIDE + GRID_PADDING
    assert grid.shape == (3, rows * step + GRID_PADDING, columns * step + GRID_PADDING)
    return torch.stack(
        [
            torch.stack(
                [
                    grid[0, GRID_PADDING + r * step : (r + 1) * step, GRID_PADDING + c * step : (c + 1) * step]
                    for c in range(columns)
                ]
            )
            for r in range(rows)
        ]
    )


def decoded(cvae, z: torch.Tensor, labels: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return cvae.decode(z, torch.tensor(labels))[:, 0]


def posterior_means(cvae, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return cvae.encoder(images, labels)[0]


@pytest.mark.parametrize(
    ("draw", "rows", "columns"),
    [
        (lambda cvae: visualize.class_samples(cvae, torch.tensor([0, 3, 3, 7]), n=5), 4, 5),
        (lambda cvae: visualize.reconstructions(cvae, *images_of([1, 2, 3, 4, 5, 6])), 2, 6),
        (lambda cvae: visualize.label_swap(cvae, n_styles=3), 3, 10),
        (
            lambda cvae: visualize.interpolation(cvae, *images_of([1, 2, 8]), *images_of([1, 2, 8], seed=1), steps=4),
            3,
            4,
        ),
        (lambda cvae: visualize.latent_interpolation(cvae, torch.tensor([1, 2]), steps=5), 2, 5),
        (lambda cvae: visualize.traversal(cvae, torch.tensor([0, 9, 4]), dim=1, steps=7), 3, 7),
    ],
    ids=["class_samples", "reconstructions", "label_swap", "interpolation", "latent_interpolation", "traversal"],
)
def test_grid_has_one_cell_per_image_in_unit_range_and_leaves_the_model_as_it_was(cvae, draw, rows, columns):
    cvae.train()
    grid = draw(cvae)
    cells(grid, rows, columns)  # checks the shape
    assert grid.dtype == torch.float32 and grid.min() >= 0 and grid.max() <= 1
    assert cvae.training and all(parameter.grad is None for parameter in cvae.parameters())


def test_class_samples_repeat_under_the_same_seed_and_follow_the_labels(cvae):
    labels = torch.tensor([0, 3, 3, 7])
    torch.manual_seed(5)
    grid = visualize.class_samples(cvae, labels, n=3)
    torch.manual_seed(5)
    assert torch.equal(grid, visualize.class_samples(cvae, labels, n=3))
    torch.manual_seed(5)
    expected = decoded(cvae, torch.randn(12, cvae.latent_dim), labels.repeat_interleave(3).tolist())
    torch.testing.assert_close(cells(grid, 4, 3).flatten(0, 1), expected)


def test_reconstructions_put_originals_above_posterior_mean_reconstructions(cvae):
    images, labels = images_of([4, 0, 9])
    grid = cells(visualize.reconstructions(cvae, images, labels), 2, 3)
    torch.testing.assert_close(grid[0], images[:, 0])
    torch.testing.assert_close(grid[1], cvae.reconstruct(images, labels, use_mean=True)[:, 0])


@pytest.mark.parametrize(("conditioning", "label_matters"), [("concat", True), ("film", True), ("none", False)])
def test_label_swap_changes_the_image_along_a_row_only_for_a_conditional_model(conditioning, label_matters):
    grid = cells(visualize.label_swap(tiny_cvae(conditioning), n_styles=2), 2, 10)
    column_change = (grid - grid[:, :1]).abs().amax(dim=(2, 3))  # (row, column) against the row's first cell
    if label_matters:
        assert (column_change[:, 1:] > 1e-3).all()
    else:
        torch.testing.assert_close(column_change, torch.zeros_like(column_change))
    assert (grid[0] - grid[1]).abs().max() > 1e-3  # each row is its own style


def test_traversal_sweeps_only_the_chosen_coordinate(cvae):
    labels = [2, 5]
    grid = cells(visualize.traversal(cvae, torch.tensor(labels), dim=3, span=2.0, steps=5), 2, 5)
    ends = torch.zeros(4, cvae.latent_dim)
    ends[:, 3] = torch.tensor([-2.0, 2.0, -2.0, 2.0])
    torch.testing.assert_close(grid[:, [0, -1]].flatten(0, 1), decoded(cvae, ends, [2, 2, 5, 5]))
    torch.testing.assert_close(grid[:, 2], decoded(cvae, torch.zeros(2, cvae.latent_dim), labels))

    still = cells(visualize.traversal(cvae, torch.tensor(labels), dim=3, span=0.0, steps=4), 2, 4)
    torch.testing.assert_close(still, still[:, :1].expand_as(still))


def test_interpolation_runs_from_the_start_to_the_end_posterior_mean(cvae):
    (start, labels), (end, _) = images_of([3, 7]), images_of([3, 7], seed=1)
    grid = cells(visualize.interpolation(cvae, start, labels, end, labels, steps=6), 2, 6)
    torch.testing.assert_close(grid[:, 0], decoded(cvae, posterior_means(cvae, start, labels), [3, 7]))
    torch.testing.assert_close(grid[:, -1], decoded(cvae, posterior_means(cvae, end, labels), [3, 7]))
    assert (grid[:, 0] - grid[:, -1]).abs().max() > 1e-3


def test_latent_interpolation_moves_between_two_draws(cvae):
    torch.manual_seed(3)
    grid = cells(visualize.latent_interpolation(cvae, torch.tensor([6]), steps=3), 1, 3)
    torch.manual_seed(3)
    start, end = torch.randn(2, 1, cvae.latent_dim)
    torch.testing.assert_close(grid[0], decoded(cvae, torch.cat([start, (start + end) / 2, end]), [6, 6, 6]))


@pytest.mark.parametrize(
    ("draw", "message"),
    [
        (lambda cvae: visualize.traversal(cvae, torch.tensor([0]), dim=4), r"dim=4 .* 0\.\.3"),
        (lambda cvae: visualize.traversal(cvae, torch.tensor([0]), dim=-1), r"dim=-1 .* 0\.\.3"),
        (lambda cvae: visualize.traversal(cvae, torch.tensor([0]), dim=0, steps=1), r"steps=1 .* at least 2"),
        (lambda cvae: visualize.latent_interpolation(cvae, torch.tensor([0]), steps=1), r"steps=1 .* at least 2"),
        (lambda cvae: visualize.class_samples(cvae, torch.tensor([0, 10]), n=2), r"labels=\[0, 10\] .* 0\.\.9"),
        (lambda cvae: visualize.class_samples(cvae, torch.tensor([-1]), n=2), r"labels=\[-1\] .* 0\.\.9"),
        (
            lambda cvae: visualize.class_samples(cvae, torch.tensor([], dtype=torch.long), n=2),
            r"labels=\[\] .* non-empty",
        ),
        (lambda cvae: visualize.class_samples(cvae, torch.tensor([1]), n=0), r"n=0 .* at least 1"),
        (lambda cvae: visualize.label_swap(cvae, n_styles=0), r"n_styles=0 .* at least 1"),
        (
            lambda cvae: visualize.reconstructions(cvae, torch.rand(2, 1, 8, 8), torch.tensor([1, 2])),
            r"images has shape \(2, 1, 8, 8\)",
        ),
        (
            lambda cvae: visualize.interpolation(cvae, *images_of([1]), *images_of([1, 2]), steps=3),
            r"start_labels has 1 .* end_labels 2",
        ),
    ],
)
def test_bad_arguments_raise_value_errors_naming_the_value_and_the_allowed_range(cvae, draw, message):
    with pytest.raises(ValueError, match=message):
        draw(cvae)
