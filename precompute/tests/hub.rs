//! `--teacher ARCH=ORG/NAME` against a Hugging Face hub on loopback (never the internet):
//! the file is downloaded into the cache with hf-hub, a second use is served from the
//! cache without a request, offline mode refuses what is not cached, and a precompute run
//! with a hub teacher records the downloaded file's checksum.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use candle_core::Device;
use meal_cli::hub::{fetch, is_hub_id, HubConfig, WEIGHTS_FILE};
use meal_models::ResNet;

/// Serve `body` at `/{repo}/resolve/main/model.safetensors` with the headers the hub
/// sends (ETag, X-Repo-Commit, byte ranges); counts requests.
fn serve(repo: &'static str, body: Vec<u8>) -> (String, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = format!("http://{}", l.local_addr().unwrap());
    let hits = Arc::new(AtomicUsize::new(0));
    let h = Arc::clone(&hits);
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut conn) = conn else { continue };
            h.fetch_add(1, Ordering::SeqCst);
            let mut r = BufReader::new(conn.try_clone().unwrap());
            let mut first = String::new();
            r.read_line(&mut first).unwrap();
            let mut range = None;
            loop {
                let mut line = String::new();
                if r.read_line(&mut line).unwrap() == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("range: bytes=") {
                    let v = v.trim().to_string();
                    let (a, b) = v.split_once('-').unwrap();
                    let a: usize = a.parse().unwrap();
                    let b: usize = if b.is_empty() {
                        body.len() - 1
                    } else {
                        b.parse().unwrap()
                    };
                    range = Some((a, b));
                }
            }
            let path = first.split_whitespace().nth(1).unwrap_or("").to_string();
            if path != format!("/{repo}/resolve/main/{WEIGHTS_FILE}") {
                let _ = conn.write_all(
                    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
                continue;
            }
            let (a, b) = range.unwrap_or((0, body.len() - 1));
            let part = &body[a..=b];
            let head = format!(
                "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {a}-{b}/{}\r\nETag: \"0123abcd\"\r\nX-Repo-Commit: 0123456789abcdef0123456789abcdef01234567\r\nConnection: close\r\n\r\n",
                part.len(),
                body.len()
            );
            let _ = conn.write_all(head.as_bytes());
            let _ = conn.write_all(part);
            let _ = conn.flush();
            let mut sink = [0u8; 16];
            let _ = conn.read(&mut sink);
        }
    });
    (addr, hits)
}

#[test]
fn hub_teachers_download_cache_and_offline() {
    let dir = tempfile::tempdir().unwrap();
    let weights = dir.path().join("w.safetensors");
    ResNet::from_preset("demo_tiny", 10, &Device::Cpu, 5)
        .unwrap()
        .save(&weights)
        .unwrap();
    let body = std::fs::read(&weights).unwrap();
    let (endpoint, hits) = serve("timm/demo_tiny.test", body.clone());
    let cfg = HubConfig {
        cache: dir.path().join("hf/hub"),
        endpoint: Some(endpoint.clone()),
        offline: false,
        stall: meal_cli::hub::STALL,
    };
    assert!(is_hub_id(std::path::Path::new("timm/demo_tiny.test")));
    assert!(!is_hub_id(&weights));
    // a mistyped local file of a weights suffix is not fetched as a repository
    for typo in ["ckpt/model.pt", "x/model.bin", "runs/last.ckpt", "a/b.pth"] {
        assert!(!is_hub_id(std::path::Path::new(typo)), "{typo}");
    }

    // offline with an empty cache: refused, no request
    let off = HubConfig {
        offline: true,
        ..cfg.clone()
    };
    let e = fetch(&off, "timm/demo_tiny.test", WEIGHTS_FILE).unwrap_err();
    assert!(format!("{e:#}").contains("HF_HUB_OFFLINE"), "{e:#}");
    assert_eq!(hits.load(Ordering::SeqCst), 0);

    let p = fetch(&cfg, "timm/demo_tiny.test", WEIGHTS_FILE).unwrap();
    assert_eq!(std::fs::read(&p).unwrap(), body);
    assert!(p.starts_with(dir.path().join("hf/hub/models--timm--demo_tiny.test")));
    let n = hits.load(Ordering::SeqCst);
    assert!(n >= 2, "metadata + download requests, saw {n}");
    // now cached: offline works and nothing is requested
    assert_eq!(fetch(&off, "timm/demo_tiny.test", WEIGHTS_FILE).unwrap(), p);
    assert_eq!(hits.load(Ordering::SeqCst), n);
    // an unknown repository is an error naming it
    let e = fetch(&cfg, "timm/nope", WEIGHTS_FILE).unwrap_err();
    assert!(format!("{e:#}").contains("timm/nope"), "{e:#}");

    // a precompute run with the hub teacher (environment as a user sets it)
    std::env::set_var("HF_HOME", dir.path().join("hf"));
    std::env::set_var("HF_ENDPOINT", &endpoint);
    let cfg = meal_data::synth::SynthConfig {
        train_per_class: 1,
        val_per_class: 0,
        min_side: 24,
        max_side: 32,
        ..Default::default()
    };
    meal_data::synth::generate(&dir.path().join("data"), &cfg, || {}).unwrap();
    let s = meal_precompute::config::RunArgs {
        data: Some(dir.path().join("data/train")),
        out: Some(dir.path().join("labels")),
        teacher: vec!["demo_tiny=timm/demo_tiny.test,size=16".into()],
        crops_per_image: Some(2),
        threads: Some(2),
        ..Default::default()
    }
    .resolve()
    .unwrap();
    meal_precompute::run::run(&s, &std::sync::atomic::AtomicBool::new(false)).unwrap();
    let m = meal_store::Manifest::read(&dir.path().join("labels")).unwrap();
    use sha2::Digest;
    assert_eq!(
        m.config.teachers[0].sha256,
        hex::encode(sha2::Sha256::digest(&body))
    );
}

/// A server that accepts and never answers: the download is given up after the stall
/// time, naming it (hf-hub's client has no read timeout; it waited as long as the
/// server kept the connection).
#[test]
fn a_silent_hub_is_given_up() {
    let dir = tempfile::tempdir().unwrap();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = format!("http://{}", l.local_addr().unwrap());
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in l.incoming() {
            held.push(conn); // kept open, never answered
        }
    });
    let cfg = HubConfig {
        cache: dir.path().join("hf/hub"),
        endpoint: Some(addr),
        offline: false,
        stall: std::time::Duration::from_secs(1),
    };
    let t = std::time::Instant::now();
    let e = fetch(&cfg, "timm/silent", WEIGHTS_FILE).unwrap_err();
    let e = format!("{e:#}");
    assert!(
        e.contains("nothing received for 1 s") && e.contains("timm/silent"),
        "{e}"
    );
    assert!(
        t.elapsed() < std::time::Duration::from_secs(20),
        "{:?}",
        t.elapsed()
    );
}

/// A bad `HF_ENDPOINT` is named as that, and a failed connection said once (the
/// client's errors each repeated their cause: one text three times, with an enum
/// variant's name).
#[test]
fn a_bad_endpoint_is_named_and_a_failure_said_once() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = |endpoint: &str| HubConfig {
        cache: dir.path().join("hf/hub"),
        endpoint: Some(endpoint.into()),
        offline: false,
        stall: std::time::Duration::from_secs(5),
    };
    let e = format!(
        "{:#}",
        fetch(&cfg("notaurl"), "timm/x", WEIGHTS_FILE).unwrap_err()
    );
    assert!(e.contains("HF_ENDPOINT=notaurl is not a URL"), "{e}");
    // a scheme in capitals is a URL (schemes are case-insensitive)
    let e = format!(
        "{:#}",
        fetch(&cfg("HTTP://127.0.0.1:9"), "timm/x", WEIGHTS_FILE).unwrap_err()
    );
    assert!(!e.contains("is not a URL"), "{e}");
    // a port nobody listens on (bound, then let go)
    let addr = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let e = format!(
        "{:#}",
        fetch(&cfg(&format!("http://{addr}")), "timm/x", WEIGHTS_FILE).unwrap_err()
    );
    assert!(e.contains("(HF_ENDPOINT)"), "{e}");
    assert_eq!(e.to_lowercase().matches("refused").count(), 1, "{e}");
}
