//! The registry client inside an async caller (the CRI server will be one). Building a runtime
//! and calling `block_on` inside one panicked; now the async API runs on the caller's runtime and
//! a blocking fetch runs on its `spawn_blocking` threads with the caller's handle.
//! Needs the loopback registry of scripts/test.sh (`HUSK_TEST_REGISTRY`).

use husk_image::{fetch, AsyncRegistry, FetchOptions, NoProgress, PullPolicy, RegistryOptions, Store};
use husk_types::{ImageSource, Reference};

fn registry() -> String {
    std::env::var("HUSK_TEST_REGISTRY")
        .expect("HUSK_TEST_REGISTRY is not set: run the tests with scripts/test.sh (it starts the loopback registry)")
}

fn opts() -> RegistryOptions {
    RegistryOptions { http: vec![registry()], all_http: false, skip_tls_verify: false }
}

#[test]
fn the_registry_client_works_inside_an_async_caller() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let reference = Reference::parse(&format!("{}/husk/busybox:latest", registry())).unwrap();
    let data = tempfile::tempdir().unwrap();
    let store = Store::open(data.path()).unwrap();
    let fetched = rt.block_on(async {
        // The async API, awaited directly on the caller's runtime.
        let reg = AsyncRegistry::new(&reference, &opts());
        let (bytes, digest) = reg.manifest(None).await.unwrap();
        assert!(!bytes.is_empty() && digest.to_string().starts_with("sha256:"));
        // A whole fetch (ingest is blocking) from a blocking thread, on the caller's runtime.
        let handle = tokio::runtime::Handle::current();
        let source = ImageSource::Registry(reference.clone());
        tokio::task::spawn_blocking(move || {
            // No trust root for the test registry: accepted, with a notice.
            let trust = husk_trust::Trust::default();
            let o = FetchOptions {
                policy: PullPolicy::Update,
                registry: opts(),
                progress: &NoProgress,
                name: None,
                parallel: 2,
                runtime: Some(handle),
                trust: Some(&trust),
            };
            fetch(&store, &source, &o).map(|f| (f.record.layers.len(), f.notice.is_some()))
        })
        .await
        .unwrap()
    });
    let (layers, notice) = fetched.unwrap();
    assert!(layers >= 1 && notice);
    drop(rt);
}
