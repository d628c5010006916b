//! The polars loader reads whole histories of several runs, JSONL and CSV alike.

use stageloop::analysis;
use stageloop::runfs::RunDir;

#[test]
fn loads_two_runs_with_different_metrics_into_one_frame() {
    let d = tempfile::tempdir().unwrap();
    let a = d.path().join("20261130-000001-pre");
    let b = d.path().join("20261130-000002-other");
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    std::fs::write(
        a.join("metrics.jsonl"),
        "{\"step\":1,\"time\":10.0,\"loss\":3.0}\n{\"step\":2,\"time\":11.0,\"loss\":null}\n{\"step\":3,\"time\":12.0,\"loss\":2.0}\n",
    )
    .unwrap();
    // A log written by another tool, as CSV, with a metric of its own.
    std::fs::write(
        b.join("metrics.csv"),
        "step,loss,reward\n1,5.0,0.1\n2,4.0,0.3\n",
    )
    .unwrap();
    let df = analysis::load_history(&[RunDir::new(&a), RunDir::new(&b)]).unwrap();
    assert_eq!(df.height(), 5);
    let loss = df.column("loss").unwrap().f64().unwrap().clone();
    assert_eq!(loss.get(0), Some(3.0));
    assert_eq!(loss.get(1), None);
    assert_eq!(loss.get(4), Some(4.0));
    let reward = df.column("reward").unwrap().f64().unwrap().clone();
    assert_eq!(reward.get(0), None);
    assert_eq!(reward.get(4), Some(0.3));
    let runs = df.column("run").unwrap().str().unwrap().clone();
    assert_eq!(runs.get(0), Some("20261130-000001-pre"));
    assert_eq!(runs.get(3), Some("20261130-000002-other"));
}

#[test]
fn a_torn_last_line_and_garbage_do_not_stop_the_loader() {
    let d = tempfile::tempdir().unwrap();
    let a = d.path().join("r");
    std::fs::create_dir_all(&a).unwrap();
    std::fs::write(
        a.join("metrics.jsonl"),
        "{\"step\":1,\"loss\":3.0}\nnot json\n{\"step\":2,\"loss\":2.5}\n{\"step\":3,\"lo",
    )
    .unwrap();
    let df = analysis::load_run(&RunDir::new(&a)).unwrap();
    assert_eq!(df.height(), 2);
}

#[test]
fn export_writes_csv_and_parquet() {
    let d = tempfile::tempdir().unwrap();
    let a = d.path().join("r");
    std::fs::create_dir_all(&a).unwrap();
    std::fs::write(a.join("metrics.jsonl"), "{\"step\":1,\"loss\":3.0}\n").unwrap();
    let mut df = analysis::load_run(&RunDir::new(&a)).unwrap();
    analysis::write_csv(&mut df, &d.path().join("m.csv")).unwrap();
    analysis::write_parquet(&mut df, &d.path().join("m.parquet")).unwrap();
    let csv = std::fs::read_to_string(d.path().join("m.csv")).unwrap();
    let header: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
    assert!(header.contains(&"loss") && header.contains(&"run"), "{csv}");
    assert!(csv.lines().nth(1).unwrap().contains("3.0"), "{csv}");
    assert!(std::fs::metadata(d.path().join("m.parquet")).unwrap().len() > 0);
}
