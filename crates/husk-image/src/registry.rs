//! Fetching from an OCI distribution registry with `oci-client`.
//!
//! The HTTP side is async (tokio), so that layers download in parallel over one client; the
//! ingest side is plain threads. A layer's byte stream crosses over a bounded channel, which
//! applies back-pressure: the download never runs ahead of the disk by more than a few chunks.

use std::io::{self, Read};
use std::sync::mpsc;

use bytes::Bytes;
use futures_util::StreamExt;
use husk_types::{Digest, Reference};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;

use crate::error::FetchError;
use crate::ingest::{BlobSource, MANIFEST_TYPES};

/// How to talk to registries.
#[derive(Debug, Clone, Default)]
pub struct RegistryOptions {
    /// Registries (`host[:port]`) reached over plain HTTP.
    pub http: Vec<String>,
    /// Every registry over plain HTTP (`--insecure-options=http`).
    pub all_http: bool,
    /// Accept any TLS certificate (`--insecure-options=tls`).
    pub skip_tls_verify: bool,
}

/// The registry client for async callers: every method is `async` and runs on the caller's
/// runtime. [`Registry`] is the blocking front the CLI's ingest uses.
pub struct AsyncRegistry {
    client: oci_client::Client,
    auth: RegistryAuth,
    reference: oci_client::Reference,
    image: String,
    registry: String,
}

impl AsyncRegistry {
    pub fn new(r: &Reference, opts: &RegistryOptions) -> AsyncRegistry {
        let protocol = if opts.all_http {
            ClientProtocol::Http
        } else if opts.http.is_empty() {
            ClientProtocol::Https
        } else {
            ClientProtocol::HttpsExcept(opts.http.clone())
        };
        let config = ClientConfig {
            protocol,
            accept_invalid_certificates: opts.skip_tls_verify,
            platform_resolver: None,
            connect_timeout: Some(std::time::Duration::from_secs(15)),
            read_timeout: Some(std::time::Duration::from_secs(60)),
            ..Default::default()
        };
        let client = oci_client::Client::new(config);
        let reference = match (&r.tag, &r.digest) {
            (_, Some(d)) => oci_client::Reference::with_digest(r.registry.clone(), r.repository.clone(), d.to_string()),
            (t, None) => oci_client::Reference::with_tag(
                r.registry.clone(),
                r.repository.clone(),
                t.clone().unwrap_or_else(|| "latest".into()),
            ),
        };
        AsyncRegistry {
            client,
            auth: credentials(&r.registry),
            reference,
            image: r.to_string(),
            registry: r.registry.clone(),
        }
    }

    fn map_err(&self, e: OciDistributionError) -> FetchError {
        map_oci_error(&self.image, &self.registry, e)
    }

    /// Fetches the manifest (or index) the reference points at: bytes and digest, both checked.
    pub async fn manifest(&self, digest: Option<&Digest>) -> Result<(Vec<u8>, Digest), FetchError> {
        let reference = match digest {
            Some(d) => self.reference.clone_with_digest(d.to_string()),
            None => self.reference.clone(),
        };
        let (bytes, digest) =
            self.client.pull_manifest_raw(&reference, &self.auth, MANIFEST_TYPES).await.map_err(|e| self.map_err(e))?;
        let digest: Digest = digest.parse().map_err(|e: husk_types::DigestError| FetchError::Registry {
            image: self.image.clone(),
            why: e.to_string(),
        })?;
        crate::ingest::check_metadata_size(&self.image, "manifest", bytes.len() as u64)?;
        // oci-client checked the bytes against the registry's digest header; check them against
        // the digest we will file them under, too.
        let actual = crate::store::hash_bytes(&bytes);
        if actual != digest {
            return Err(FetchError::Store {
                image: self.image.clone(),
                source: crate::error::StoreError::DigestMismatch { expected: digest, actual },
            });
        }
        Ok((bytes, digest))
    }

    /// The manifest under `tag` of the same repository (a cosign signature tag), raw;
    /// `Ok(None)` when there is no such tag.
    pub async fn tagged_manifest(&self, tag: &str) -> Result<Option<Vec<u8>>, FetchError> {
        let reference = oci_client::Reference::with_tag(
            self.reference.registry().to_string(),
            self.reference.repository().to_string(),
            tag.to_string(),
        );
        match self.client.pull_manifest_raw(&reference, &self.auth, MANIFEST_TYPES).await {
            Ok((bytes, _)) => {
                crate::ingest::check_metadata_size(&self.image, "signature manifest", bytes.len() as u64)?;
                Ok(Some(bytes.to_vec()))
            }
            Err(e) => match self.map_err(e) {
                FetchError::NotFound { .. } => Ok(None),
                e => Err(e),
            },
        }
    }

    /// A small blob in memory, checked against its digest and size.
    pub async fn small_blob(&self, digest: &Digest, size: u64) -> Result<Vec<u8>, FetchError> {
        let mut stream = std::pin::pin!(self.blob_stream(digest).await?);
        let mut buf = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk
                .map_err(|e| FetchError::Source { image: self.image.clone(), why: format!("reading {digest}: {e}") })?;
            buf.extend_from_slice(&chunk);
            if buf.len() as u64 > size {
                break;
            }
        }
        crate::store::check_blob(digest, size, &buf)
            .map_err(|source| FetchError::Store { image: self.image.clone(), source })?;
        Ok(buf)
    }

    /// A blob's bytes as they arrive (to be hashed and checked by the consumer).
    pub async fn blob_stream(
        &self,
        digest: &Digest,
    ) -> Result<impl futures_util::Stream<Item = io::Result<Bytes>> + Send + 'static, FetchError> {
        let d = digest.to_string();
        let stream = self.client.pull_blob_stream(&self.reference, d.as_str()).await.map_err(|e| self.map_err(e))?;
        Ok(stream.stream.map(|chunk| chunk.map_err(|e| io::Error::other(e.to_string()))))
    }
}

/// Where the blocking [`Registry`] runs its async client.
enum Runtime {
    /// Its own (the CLI: no runtime exists).
    Own(tokio::runtime::Runtime),
    /// The caller's, from a thread that may block (an async server's `spawn_blocking` thread):
    /// blocking on a runtime from inside one of its tasks would panic.
    Handle(tokio::runtime::Handle),
}

impl Runtime {
    fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        match self {
            Runtime::Own(rt) => rt.block_on(f),
            Runtime::Handle(h) => h.block_on(f),
        }
    }

    fn handle(&self) -> &tokio::runtime::Handle {
        match self {
            Runtime::Own(rt) => rt.handle(),
            Runtime::Handle(h) => h,
        }
    }
}

/// The blocking registry client: [`AsyncRegistry`] driven from plain threads.
pub struct Registry {
    rt: Runtime,
    inner: AsyncRegistry,
}

impl Registry {
    /// With a runtime of its own, or on `handle` (see [`Runtime::Handle`]).
    pub fn new(
        r: &Reference,
        opts: &RegistryOptions,
        handle: Option<tokio::runtime::Handle>,
    ) -> Result<Registry, FetchError> {
        let rt = match handle {
            Some(h) => Runtime::Handle(h),
            None => Runtime::Own(
                tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().map_err(|e| {
                    FetchError::Source { image: r.to_string(), why: format!("cannot start the I/O runtime: {e}") }
                })?,
            ),
        };
        Ok(Registry { rt, inner: AsyncRegistry::new(r, opts) })
    }

    /// Fetches the manifest (or index) the reference points at: bytes and digest.
    pub fn manifest(&self, digest: Option<&Digest>) -> Result<(Vec<u8>, Digest), FetchError> {
        self.rt.block_on(self.inner.manifest(digest))
    }

    /// See [`AsyncRegistry::tagged_manifest`].
    pub fn tagged_manifest(&self, tag: &str) -> Result<Option<Vec<u8>>, FetchError> {
        self.rt.block_on(self.inner.tagged_manifest(tag))
    }

    /// See [`AsyncRegistry::small_blob`].
    pub fn small_blob(&self, digest: &Digest, size: u64) -> Result<Vec<u8>, FetchError> {
        self.rt.block_on(self.inner.small_blob(digest, size))
    }

    /// GETs `url` (a lookaside signature), at most `max` bytes; `Ok(None)` on 404.
    pub fn http_get(&self, url: &str, max: u64) -> Result<Option<Vec<u8>>, String> {
        self.rt.block_on(async {
            let client = reqwest::Client::builder()
                .connect_timeout(std::time::Duration::from_secs(15))
                .timeout(std::time::Duration::from_secs(60))
                .build()
                .map_err(|e| e.to_string())?;
            let mut resp = client.get(url).send().await.map_err(|e| e.to_string())?;
            match resp.status().as_u16() {
                404 => return Ok(None),
                200 => {}
                s => return Err(format!("HTTP {s}")),
            }
            let mut buf = Vec::new();
            while let Some(chunk) = resp.chunk().await.map_err(|e| e.to_string())? {
                buf.extend_from_slice(&chunk);
                if buf.len() as u64 > max {
                    return Err("larger than a signature can be".into());
                }
            }
            Ok(Some(buf))
        })
    }
}

impl BlobSource for Registry {
    fn open(&self, digest: &Digest, _size: u64) -> Result<Box<dyn Read + Send + '_>, FetchError> {
        let stream = self.rt.block_on(self.inner.blob_stream(digest))?;
        let (tx, rx) = mpsc::sync_channel::<io::Result<Bytes>>(8);
        self.rt.handle().spawn(async move {
            let mut s = std::pin::pin!(stream);
            while let Some(item) = s.next().await {
                let failed = item.is_err();
                // A closed channel means the reader gave up (error elsewhere): stop downloading.
                if tx.send(item).is_err() || failed {
                    return;
                }
            }
        });
        Ok(Box::new(ChannelReader { rx, buf: Bytes::new(), pos: 0 }))
    }
}

/// A `Read` over chunks arriving on a channel; EOF when the sender is done.
struct ChannelReader {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    buf: Bytes,
    pos: usize,
}

impl Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos >= self.buf.len() {
            match self.rx.recv() {
                Ok(Ok(b)) => {
                    self.buf = b;
                    self.pos = 0;
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => return Ok(0),
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Credentials from the docker-style config (`$DOCKER_CONFIG/config.json` or
/// `~/.docker/config.json`, including credential helpers); anonymous when there are none.
fn credentials(registry: &str) -> RegistryAuth {
    let key = if registry == "docker.io" { "https://index.docker.io/v1/" } else { registry };
    match docker_credential::get_credential(key) {
        Ok(docker_credential::DockerCredential::UsernamePassword(u, p)) => RegistryAuth::Basic(u, p),
        Ok(docker_credential::DockerCredential::IdentityToken(t)) => RegistryAuth::Bearer(t),
        Err(e) => {
            tracing::debug!("no credentials for {registry}: {e}");
            RegistryAuth::Anonymous
        }
    }
}

fn map_oci_error(image: &str, registry: &str, e: OciDistributionError) -> FetchError {
    let image = image.to_string();
    let registry = registry.to_string();
    match e {
        OciDistributionError::UnauthorizedError { url } => {
            FetchError::Denied { image, registry, status: 401, why: format!("unauthorized for {url}") }
        }
        OciDistributionError::AuthenticationFailure(why) => FetchError::Denied { image, registry, status: 401, why },
        OciDistributionError::RegistryError { envelope, .. } => {
            let codes: Vec<String> = envelope.errors.iter().map(|e| format!("{:?}", e.code)).collect();
            let text = envelope.errors.iter().map(|e| e.message.clone()).collect::<Vec<_>>().join("; ");
            if codes.iter().any(|c| c.contains("Unknown")) {
                FetchError::NotFound { image, registry }
            } else if codes.iter().any(|c| c.contains("Unauthorized") || c.contains("Denied")) {
                FetchError::Denied { image, registry, status: 403, why: text }
            } else {
                FetchError::Registry { image, why: format!("{} {text}", codes.join(",")) }
            }
        }
        OciDistributionError::ServerError { code: 404, .. } => FetchError::NotFound { image, registry },
        OciDistributionError::ServerError { code: c @ (401 | 403), message, .. } => {
            FetchError::Denied { image, registry, status: c, why: message }
        }
        OciDistributionError::ServerError { code, message, .. } => {
            FetchError::Registry { image, why: format!("HTTP {code}: {}", message.trim()) }
        }
        OciDistributionError::ImageManifestNotFoundError(_) => FetchError::NotFound { image, registry },
        OciDistributionError::UnsupportedMediaTypeError(mt) => {
            FetchError::UnsupportedMediaType { image, media_type: mt }
        }
        OciDistributionError::UnsupportedSchemaVersionError(v) => {
            FetchError::UnsupportedMediaType { image, media_type: format!("docker schema {v} manifest") }
        }
        OciDistributionError::RequestError(e) => {
            let mut why = e.to_string();
            let mut src: Option<&dyn std::error::Error> = std::error::Error::source(&e);
            while let Some(s) = src {
                why = format!("{why}: {s}");
                src = s.source();
            }
            FetchError::Unreachable { image, registry, why }
        }
        other => FetchError::Registry { image, why: other.to_string() },
    }
}
