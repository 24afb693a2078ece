"""experiments.tables: the Fashion-MNIST results table and the pilot's tables, from records on disk."""

from __future__ import annotations

import json
import os

import matplotlib.image
import pytest

from experiments import fmnist_records, fmnist_tables, row_figures, tables


def eval_record(fid: float, floor_values: list[float]) -> dict:
  return {"stage": "eval", "metrics": {"fid": fid, "recon_fid": 5.0, "sw2_squared": 2e-3},
          "sw2": {"real_vs_real": {"values": floor_values}}}


def test_fmnist_table_gives_mean_and_spread_over_seeds_beside_002(tmp_path):
  for seed, fid in ((0, 10.0), (1, 12.0)):
    directory = tmp_path / "c" / f"s{seed}"
    os.makedirs(directory / "diagnose")
    json.dump(eval_record(fid, [1e-4, 3e-4]), open(directory / "ldm_rk4_10_n10000.json", "w"))
    json.dump({"stage": "diagnose"}, open(directory / "diagnose" / "ldm.json", "w"))  # not an eval record
  table = fmnist_tables.fmnist_table(fmnist_records.fmnist_records(str(tmp_path)))
  (row,) = [line for line in table.splitlines() if line.startswith("| (c)")]
  # FIDs 10 and 12: mean 11, sample sd sqrt(2) = 1.41; the floor pools 4 draws: mean 2e-4, sd 1.15e-4.
  assert "| 5.00 ± 0.00 (2) | 11.00 ± 1.41 (2) | 2.00e-03 ± 0.0e+00 (2) | 2.00e-04 ± 1.2e-04 (4) |" in row
  assert row.endswith("| 6.51 | 13.45 | 2.63e-03 |")
  (lsi,) = [line for line in table.splitlines() if line.startswith("| two-stage LSI")]
  assert "| - | - | - | - |" in lsi


def test_a_second_eval_record_of_a_seed_is_an_error_not_a_second_seed(tmp_path):
  directory = tmp_path / "c" / "s0"
  os.makedirs(directory)
  json.dump(eval_record(10.0, [1e-4]), open(directory / "ldm_rk4_10_n10000.json", "w"))
  assert fmnist_records.find_record(str(directory), "eval")[0].endswith("ldm_rk4_10_n10000.json")
  assert fmnist_records.find_record(str(directory), "diagnose") is None
  json.dump(eval_record(20.0, [1e-4]), open(directory / "ldm_heun_pc_50_n10000.json", "w"))
  with pytest.raises(ValueError, match="2 eval records .* a run and seed has one"):
    fmnist_records.fmnist_records(str(tmp_path))


def test_the_lowest_mean_fid_is_set_beside_002_s_lowest(tmp_path):
  assert fmnist_tables.best_fid_line({}).endswith(
      "no row yet; 002's lowest: 9.26, (b) Tweedie on LSI-shaped latent (a's VAE).")
  for row, fids in (("c", (10.0, 12.0)), ("lsi", (9.0,)), ("a", (13.0, 7.0))):
    for seed, fid in enumerate(fids):
      os.makedirs(tmp_path / row / f"s{seed}")
      json.dump(eval_record(fid, [1e-4]), open(tmp_path / row / f"s{seed}" / "ldm_rk4_10_n10000.json", "w"))
  # Means: c 11, lsi 9 (one seed), a 10: lsi's is the lowest; 9 / 9.26 = 0.97.
  assert fmnist_tables.best_fid_line(fmnist_records.fmnist_records(str(tmp_path))) == (
      "Lowest mean FID at RK4 x 10 (40 NFE): 9.00 (1), two-stage LSI LDM (reg. KL); 002's lowest: 9.26, "
      "(b) Tweedie on LSI-shaped latent (a's VAE); ours is 0.97 times 002's.")


def tails_record(seed: int, sw2_squared: float, trimmed: float, share: float, beyond: int) -> dict:
  record = eval_record(10.0, [1e-4, 3e-4])
  record["config"] = {"seed": seed}
  record["metrics"].update(sw2_squared=sw2_squared, sw2_squared_real_vs_real_mean=2e-4, sw2_squared_trimmed=trimmed,
                           sw2_squared_trimmed_real_vs_real_mean=1e-4, sw2_tail_share=share)
  record["sw2"].update(tail=0.01, num_samples=10000, norms={"generated_beyond_real_max": beyond})
  record["sw2"]["real_vs_real"]["tail_share"] = {"values": [0.1, 0.3]}
  return record


def test_the_sw2_tails_table_reads_each_seed_against_its_own_floor(tmp_path):
  for row, records in (("c", [tails_record(0, 2e-3, 3e-4, 0.8, 10), tails_record(1, 6e-3, 5e-4, 0.9, 30)]),
                       ("lsi", [eval_record(9.0, [1e-4])])):
    for seed, record in enumerate(records):
      os.makedirs(tmp_path / row / f"s{seed}")
      json.dump(record, open(tmp_path / row / f"s{seed}" / "ldm_rk4_10_n10000.json", "w"))
  table = fmnist_tables.sw2_tails_table(fmnist_records.fmnist_records(str(tmp_path)))
  (row,) = [line for line in table.splitlines() if line.startswith("| (c)")]
  # SW2^2 / floor 10 and 30 (mean 20, sd 14.1); trimmed / trimmed floor 3 and 5 (4, sd 1.4); shares 0.8, 0.9;
  # the floor's 4 shares 0.1, 0.3, 0.1, 0.3 (0.2, sd 0.115); beyond: 10 and 30.
  assert row == ("| (c) two-stage Tweedie LDM (reg. KL) | 20.0 ± 14.1 (2) | 4.0 ± 1.4 (2) | 0.85 ± 0.07 (2) | "
                 "0.20 ± 0.12 (4) | 20 ± 14 (2) |")
  assert not any(line.startswith("| two-stage LSI") for line in table.splitlines())
  assert table.endswith("leaves it out. Records without the split (evaluated before it was recorded): lsi s?.")
  bad = tails_record(0, 2e-3, 3e-4, 0.8, 10)
  bad["sw2"]["tail"] = 0.02
  json.dump(bad, open(tmp_path / "lsi" / "s0" / "ldm_rk4_10_n10000.json", "w"))
  with pytest.raises(ValueError, match="different tails"):
    fmnist_tables.sw2_tails_table(fmnist_records.fmnist_records(str(tmp_path)))


def test_the_command_reads_a_results_directory_and_names_a_missing_record(tmp_path, capsys):
  directory = tmp_path / "c" / "s0"
  os.makedirs(directory)
  json.dump(eval_record(10.0, [1e-4, 3e-4]), open(directory / "ldm_rk4_10_n10000.json", "w"))
  tables.main([str(tmp_path)])
  assert "| 10.00 (1) |" in capsys.readouterr().out
  with pytest.raises(SystemExit, match="missing.json: no such record"):
    tables.main([str(tmp_path / "missing.json")])
  with pytest.raises(SystemExit, match="ldm_rk4_10_n10000.json: 'eval' records have no table here"):
    tables.main([str(directory / "ldm_rk4_10_n10000.json")])


def test_pilot_tables():
  stages = {kind: {"best": 0.25} for kind in ("vae", "ldm", "ldm_gate", "cotrain")}
  record = {"stage": "pilot", "timing": {
      "candidates": {"small": stages},
      "projection_hours_two_seeds": {"small": {"eval_seconds_per_row": 1800.0, "program": 30.0}}},
      "learning": {"small": {"epochs": 3, "num_steps": 1404, "rows": {"c": {"wall_seconds": 600.0, "metrics": {
          "fid": 100.0, "recon_fid": 60.0, "sw2_squared": 1.4, "sw2_squared_real_vs_real_mean": 0.0034,
          "sw2_squared_real_vs_real_std": 0.0009}}}}}}
  timing, learning = (table(record) for table in tables.TABLES["pilot"])
  assert "| small | 0.250 s | 0.250 s | 0.250 s | 0.250 s | 30 min | 30.0 h |" in timing
  assert "| (c) two-stage Tweedie LDM (reg. KL) | 100.0 | 60.0 | 1.4 | 0.0034 ± 0.0009 | 10 min |" in learning


def write_diagnose_record(results, row: str, seed: int, gate_to_oracle: list[float] | None) -> None:
  """A diagnose record at 2 times under results/<row>/s<seed>/diagnose/; gated when gate_to_oracle is given."""
  gates = {"oracle_gate": [0.5, 0.5], "oracle_gate_q10": [0.2, 0.3], "oracle_gate_q90": [0.7, 0.8],
           "prior_gate": [0.1, 0.3], "critic_vs_lsi": [1.0, 3.0], "critic_vs_gaussian": [4.0, 4.0],
           "lsi_vs_gaussian": [2.0, 2.0]}
  if gate_to_oracle is not None:
    gates.update(gate_to_oracle=gate_to_oracle, gate_to_prior=[0.6, 0.6], gate=[0.9, 0.9])
  record = {"stage": "diagnose", "times": [0.001, 0.5], "log_snr": [10.0, -1.0], "num_posteriors": 1000,
            "split": "test", "gates": gates}
  os.makedirs(results / row / f"s{seed}" / "diagnose")
  json.dump(record, open(results / row / f"s{seed}" / "diagnose" / "ldm.json", "w"))


def test_diagnose_table_averages_over_times_then_seeds_and_leaves_gateless_rows_blank(tmp_path):
  for row, seed, g in (("cg_element", 0, [0.1, 0.3]), ("cg_element", 1, [0.3, 0.5]), ("c", 0, None)):
    write_diagnose_record(tmp_path, row, seed, g)
  table = fmnist_tables.diagnose_table(fmnist_records.fmnist_records(str(tmp_path), stage="diagnose"))
  (element,) = [line for line in table.splitlines()
                if line.startswith("| two-stage critic-gate, posterior CSEM, per-element")]
  # |g - g*| averaged over the two times: 0.2 (seed 0) and 0.4 (seed 1): mean 0.3, sd 0.141.
  assert element.startswith(
      "| two-stage critic-gate, posterior CSEM, per-element gate | 0.300 ± 0.141 (2) | 0.600 ± 0.000 (2) |")
  assert element.endswith("| 2.000 ± 0.000 (2) | 4.000 ± 0.000 (2) | 2.000 ± 0.000 (2) |")
  (c,) = [line for line in table.splitlines() if line.startswith("| (c)")]
  assert c.startswith("| (c) two-stage Tweedie LDM (reg. KL) | - | - | - | 0.500 (1) | 0.200 (1) | 2.000 (1) |")
  assert not any(line.startswith("| two-stage LSI") for line in table.splitlines())  # no record: no line
  assert "Over 2 times, log-SNR -1.0 to 10.0; 1000 test posteriors." in table


def test_diagnose_table_refuses_records_of_different_settings(tmp_path):
  for row, times in (("c", [0.001, 0.5]), ("lsi", [0.001, 0.9])):
    os.makedirs(tmp_path / row / "s0" / "diagnose")
    record = {"stage": "diagnose", "times": times, "log_snr": [10.0, -1.0], "num_posteriors": 1000,
              "split": "test", "gates": {"critic_vs_lsi": [1.0, 1.0]}}
    json.dump(record, open(tmp_path / row / "s0" / "diagnose" / "ldm.json", "w"))
  with pytest.raises(ValueError, match="different settings"):
    fmnist_tables.diagnose_table(fmnist_records.fmnist_records(str(tmp_path), stage="diagnose"))


def test_gates_by_row_figure_from_the_diagnose_records_and_its_errors(tmp_path, capsys):
  with pytest.raises(SystemExit, match="no diagnose record under"):
    row_figures.main([str(tmp_path)])
  for row, seed, g in (("cg_element", 0, [0.1, 0.3]), ("cg_element", 1, [0.3, 0.5]), ("c", 0, None)):
    write_diagnose_record(tmp_path, row, seed, g)
  with pytest.raises(SystemExit, match="no sample grid under"):  # the gates figure is drawn all the same
    row_figures.main([str(tmp_path)])
  assert capsys.readouterr().out.strip() == str(tmp_path / "figures" / "gates_by_row.png")
  for row in ("c", "cg_element"):
    matplotlib.image.imsave(tmp_path / row / "s0" / "ldm_rk4_10_n10000_grid.png", [[0.0, 1.0], [1.0, 0.0]])
  row_figures.main([str(tmp_path)])
  paths = capsys.readouterr().out.split()
  assert paths == [str(tmp_path / "figures" / name) for name in ("gates_by_row.png", "samples_by_row.png")]
  for path in paths:
    image = matplotlib.image.imread(path)
    assert image.shape[0] * image.shape[1] >= 200 * 150 and image.std() > 0.01
  record = json.load(open(tmp_path / "c" / "s0" / "diagnose" / "ldm.json"))
  json.dump({**record, "times": [0.001, 0.9]}, open(tmp_path / "c" / "s0" / "diagnose" / "ldm.json", "w"))
  with pytest.raises(SystemExit, match="different settings"):
    row_figures.main([str(tmp_path)])


def test_claims_table_judges_each_claim_on_the_seeds_beside_002(tmp_path):
  for row, fids in (("c", (10.0, 12.0)), ("lsi", (7.0, 7.4)), ("cg_scalar", (14.0, 14.2)), ("cg_element", (9.0,))):
    for seed, fid in enumerate(fids):
      os.makedirs(tmp_path / row / f"s{seed}")
      json.dump({**eval_record(fid, [1e-4]), "config": {"seed": seed}},
                open(tmp_path / row / f"s{seed}" / "ldm_rk4_10_n10000.json", "w"))
  lines = fmnist_tables.claims_table(fmnist_records.fmnist_records(str(tmp_path))).splitlines()
  line = lambda start: next(l for l in lines if l.startswith(start))
  # c: mean 11, sd 1.41 -> 2 x sd 2.83; lsi: 7.2 (-3.80); cg_scalar: 14.1 (+3.10); 002: 12.18 - 13.45.
  # Per seed: lsi - c 7 - 10 and 7.4 - 12; cg_scalar - c 14 - 10 and 14.2 - 12; cg_element - c at seed 0 only.
  assert line("| lsi < (c) on FID |").endswith("| -3.80 | 2.83 | holds | s0: -3.00, s1: -4.60 | -1.27 |")
  assert line("| cg_scalar < (c) on FID |").endswith("| 3.10 | 2.83 | reversed | s0: 4.00, s1: 2.20 | - |")
  assert line("| cg_element < (c) on FID |").endswith("| -2.00 | - | needs 2 seeds | s0: -1.00 | - |")
  assert line("| (a) < (c) on FID |").endswith("| - | - | needs 2 seeds | - | -4.06 |")


def test_readme_tables_are_written_between_the_markers_only(tmp_path, capsys):
  directory = tmp_path / "results" / "c" / "s0"
  os.makedirs(directory)
  json.dump(eval_record(10.0, [1e-4, 3e-4]), open(directory / "ldm_rk4_10_n10000.json", "w"))
  readme = tmp_path / "README.md"
  readme.write_text(f"# title\n\nbefore\n{tables.README_BEGIN}\nold table\n{tables.README_END}\nafter\n")
  tables.main(["--readme", str(readme), str(tmp_path / "results")])
  text = readme.read_text()
  assert text.startswith("# title\n\nbefore\n" + tables.README_BEGIN + "\n| method |") and text.endswith(
      f"{tables.README_END}\nafter\n")
  assert "old table" not in text and "| 10.00 (1) |" in text
  assert text.split(tables.README_BEGIN + "\n")[1].split("\n" + tables.README_END)[0] == fmnist_tables.readme_tables(
      str(tmp_path / "results"))
  tables.main(["--readme", str(readme), str(tmp_path / "results")])
  assert "already as printed" in capsys.readouterr().out.splitlines()[-1]
  # A mistyped results directory is refused, the README's tables left as they are.
  with pytest.raises(SystemExit, match="no such results directory"):
    tables.main(["--readme", str(readme), "--check"])
  assert readme.read_text() == text
  readme.write_text("# no markers\n")
  with pytest.raises(SystemExit, match="must hold the line"):
    tables.main(["--readme", str(readme), str(tmp_path / "results")])


def test_the_readme_s_tables_are_those_of_the_committed_records():
  """The README says its tables are `python -m experiments.tables` as printed: they are."""
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  with open(os.path.join(repo, "README.md")) as f:
    text = f.read()
  printed = fmnist_tables.readme_tables(os.path.join(repo, fmnist_records.FMNIST_RESULTS))
  assert tables.readme_with_tables(text, printed) == text, (
      "README.md's tables are not those of experiments/results/fmnist: python -m experiments.tables --readme README.md")


def far_record(run: str, far: list[int], beyond: tuple[int, int], medians: tuple[float, float]) -> dict:
  entry = lambda i, steps: {"steps": steps, "far": {"beyond_real_max": beyond[i], "norm_quantiles": [medians[i], 0, 0],
                                                    "mean_distance_to_finest": 0.5 * (1 - i)},
                            "control": {"beyond_real_max": 0}}
  return {"run": run, "eval_record": {"sampler": "rk4"}, "num_compared": 100, "far_rows": far,
          "control_rows": far, "by_steps": [entry(0, 10), entry(1, 80)], "vae_sha256": "v1",
          "prior_norm_percentile": {"far": 0.8, "control": 0.5}}


def test_the_far_latents_table_lists_the_records_in_table_order(tmp_path):
  assert fmnist_tables.far_latents_table(str(tmp_path)) == ""
  os.makedirs(tmp_path / "far_latents")
  for run, far in (("lsi/s1", [3, 7, 9]), ("c/s1", [3, 7]), ("a/s1", [3, 9])):
    record = far_record(run, far, (2, 1), (20.0, 18.5))
    if run == "a/s1":
      record.update(vae_sha256="v2", prior_norm_percentile=None)  # another VAE; a record without percentiles
    if run == "c/s1":
      record["fid"] = {"all": 36.0, "without_far": 36.5, "without_random": [36.0, 36.1, 36.2, 36.1, 36.1]}
    json.dump(record, open(tmp_path / "far_latents" / f"{run.replace('/', '_')}.json", "w"))
  lines = fmnist_tables.far_latents_table(str(tmp_path)).splitlines()
  assert [line.split(" | ")[0] for line in lines[2:5]] == ["| c/s1", "| lsi/s1", "| a/s1"]
  assert lines[2] == ("| c/s1 | rk4 x 10 (most: 80) | 2 of 100 | 1 | 20.00 -> 18.50 | 0.500 | 0 -> 0 of 2 | "
                      "0.80, 0.50 | 36.00, 36.50, 36.10 ± 0.07 |")
  assert lines[4].endswith("| - | - |")  # neither percentiles nor FIDs
  # Only c/s1 and lsi/s1 are on one VAE: they share rows 3 and 7.
  assert "that runs on one VAE share: c/s1 and lsi/s1: 2 of 2 and 3." in lines[6]
