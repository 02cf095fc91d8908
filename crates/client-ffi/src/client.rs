//! Clients: created from identity strings, with their own runtime; freed.

use std::ffi::c_char;
use std::sync::Arc;
use std::time::Duration;

use floatlm_client::{Client, ClientConfig, Options};

use crate::error::{Failure, FloatlmError, FloatlmStatus};
use crate::guard::{self, ffi, Rt, Tagged, DEAD};

pub(crate) const CLIENT_MAGIC: u64 = 0x666c_6d63_6c69_656e; // "flmclien"

/// A connection to a set of license servers (opaque). Thread-safe: any
/// number of threads may use one client at once. Free it with
/// `floatlm_client_free`.
pub struct FloatlmClient {
    _private: [u8; 0],
}

/// What a client is: the Rust client and the runtime it runs on.
pub(crate) struct ClientInner {
    pub rt: Arc<Rt>,
    pub client: Client,
    /// How long freeing a held seat waits for the server.
    pub request_timeout: Duration,
}

pub(crate) type ClientBox = Tagged<ClientInner>;

/// Tuning for `floatlm_client_new`; start from `floatlm_options_default()`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct FloatlmOptions {
    /// The longest wait for one server's answer to one request (default 5000).
    pub request_timeout_ms: u32,
    /// Ask the next server too when the current one has not answered within
    /// this long (default 500).
    pub hedge_delay_ms: u32,
    /// A failed server is tried again after this long (default 60000).
    pub retry_interval_ms: u32,
    /// How often a failed server is retried; negative: forever (default -1).
    pub max_retries: i32,
}

/// The default options (those used when `options` is NULL).
#[no_mangle]
pub extern "C" fn floatlm_options_default() -> FloatlmOptions {
    let o = Options::default();
    FloatlmOptions {
        request_timeout_ms: millis(o.request_timeout),
        hedge_delay_ms: millis(o.hedge_delay),
        retry_interval_ms: millis(o.retry_interval),
        max_retries: o
            .max_retries
            .map(|n| i32::try_from(n).unwrap_or(i32::MAX))
            .unwrap_or(-1),
    }
}

fn millis(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

/// Rust options from C's: the OS user, host and groups and
/// FLOATLM_AUTH_MECH / FLOATLM_AUTH_DATA as the Rust client reads them.
unsafe fn rust_options(o: *const FloatlmOptions) -> Result<Options, Failure> {
    let mut opts = Options::from_env();
    if o.is_null() {
        return Ok(opts);
    }
    if (o as usize) % std::mem::align_of::<FloatlmOptions>() != 0 {
        return Err(Failure::invalid("options is misaligned"));
    }
    let o = o.read();
    opts.request_timeout = guard::timeout(o.request_timeout_ms, "options.request_timeout_ms")?;
    opts.hedge_delay = guard::timeout(o.hedge_delay_ms, "options.hedge_delay_ms")?;
    opts.retry_interval = guard::timeout(o.retry_interval_ms, "options.retry_interval_ms")?;
    opts.max_retries = u32::try_from(o.max_retries).ok();
    Ok(opts)
}

/// Starts a runtime, connects, and hands the client to C.
fn connect(identities: Vec<String>, opts: Options) -> Result<*mut FloatlmClient, Failure> {
    let rt = Arc::new(Rt::new()?);
    let request_timeout = opts.request_timeout;
    let client = rt.get().block_on(Client::connect(&identities, opts))?;
    Ok(hand_over(rt, client, request_timeout))
}

/// Boxes a connected client for C.
fn hand_over(rt: Arc<Rt>, client: Client, request_timeout: Duration) -> *mut FloatlmClient {
    let boxed = Box::new(ClientBox {
        magic: CLIENT_MAGIC,
        inner: ClientInner {
            rt,
            client,
            request_timeout,
        },
    });
    Box::into_raw(boxed) as *mut FloatlmClient
}

/// Creates a client from identity strings `ID:SECRET@HOST:PORT`, several
/// separated by commas (one per server, as in FLOATLM_IDENTITY), and
/// connects to the first server that answers (blocking, up to the request
/// timeout per server). `options` may be NULL for the defaults. On success
/// `*out` is the client; on failure it is NULL.
///
/// # Safety
/// `identity` is NULL or a NUL-terminated string; `options` NULL or a
/// `FloatlmOptions`; `out` NULL or writable; `err` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn floatlm_client_new(
    identity: *const c_char,
    options: *const FloatlmOptions,
    out: *mut *mut FloatlmClient,
    err: *mut FloatlmError,
) -> FloatlmStatus {
    ffi(err, || {
        let out = guard::out(out, "out", std::ptr::null_mut())?;
        let identity = guard::text(identity, "identity")?;
        guard::not_in_callback("floatlm_client_new")?;
        let ids: Vec<String> = identity
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        if ids.is_empty() {
            return Err(Failure::invalid(
                "identity is empty: give ID:SECRET@HOST:PORT (several separated by commas)",
            ));
        }
        *out = connect(ids, rust_options(options)?)?;
        Ok(())
    })
}

/// Creates a client for one identity (`credential`: `ID:SECRET`) on an
/// explicit list of servers (`servers`: `count` strings `HOST:PORT`), and
/// connects to the first that answers. Otherwise as `floatlm_client_new`.
///
/// # Safety
/// `credential` is NULL or a NUL-terminated string; `servers` NULL or an
/// array of `count` pointers, each NULL or a NUL-terminated string; the rest
/// as `floatlm_client_new`.
#[no_mangle]
pub unsafe extern "C" fn floatlm_client_new_servers(
    credential: *const c_char,
    servers: *const *const c_char,
    count: usize,
    options: *const FloatlmOptions,
    out: *mut *mut FloatlmClient,
    err: *mut FloatlmError,
) -> FloatlmStatus {
    ffi(err, || {
        let out = guard::out(out, "out", std::ptr::null_mut())?;
        let credential = guard::text(credential, "credential")?;
        if servers.is_null() {
            return Err(Failure::invalid("servers is NULL"));
        }
        if (servers as usize) % std::mem::align_of::<*const c_char>() != 0 {
            return Err(Failure::invalid("servers is misaligned"));
        }
        if count == 0 || count > 64 {
            return Err(Failure::invalid(format!(
                "count is {count}: give 1 to 64 servers"
            )));
        }
        if credential.contains('@') || !credential.contains(':') {
            return Err(Failure::invalid(
                "credential must be ID:SECRET (the identity string without @HOST:PORT)",
            ));
        }
        let mut ids = Vec::with_capacity(count);
        for i in 0..count {
            let server = guard::text(*servers.add(i), &format!("servers[{i}]"))?;
            if server.trim().is_empty() || server.contains(',') {
                return Err(Failure::invalid(format!(
                    "servers[{i}] must be one HOST:PORT"
                )));
            }
            ids.push(format!("{credential}@{}", server.trim()));
        }
        guard::not_in_callback("floatlm_client_new_servers")?;
        *out = connect(ids, rust_options(options)?)?;
        Ok(())
    })
}

/// Creates a client from the client configuration file, the way the CLI
/// and the Rust library read it (docs/client.md): `path` names the file, or
/// NULL searches FLOATLM_CLIENT_CONFIG, then
/// `$XDG_CONFIG_HOME/floatlm/client.ini` (`~/.config/floatlm/client.ini`),
/// then `/etc/floatlm/client.ini`; FLOATLM_* variables override the file.
/// The file's servers, identity, affinity group, retry settings, `ca_file`
/// and TLS options apply; `options` (NULL for the defaults) is overridden
/// by what the file sets. An unreadable or invalid file is
/// `FLOATLM_STATUS_CONFIG` with the file, line and key in the message.
///
/// # Safety
/// `path` is NULL or a NUL-terminated string; the rest as
/// `floatlm_client_new`.
#[no_mangle]
pub unsafe extern "C" fn floatlm_client_new_from_config(
    path: *const c_char,
    options: *const FloatlmOptions,
    out: *mut *mut FloatlmClient,
    err: *mut FloatlmError,
) -> FloatlmStatus {
    ffi(err, || {
        let out = guard::out(out, "out", std::ptr::null_mut())?;
        let path = if path.is_null() {
            None
        } else {
            Some(guard::text(path, "path")?.to_string())
        };
        guard::not_in_callback("floatlm_client_new_from_config")?;
        let opts = rust_options(options)?;
        let config = ClientConfig::load_with(|k| match (&path, k) {
            (Some(p), "FLOATLM_CLIENT_CONFIG") => Some(p.clone()),
            _ => std::env::var(k).ok(),
        })?;
        let rt = Arc::new(Rt::new()?);
        let config_opts = config.options(opts);
        let request_timeout = config_opts.request_timeout;
        let client = rt
            .get()
            .block_on(Client::with_servers(config.servers()?, config_opts))?;
        *out = hand_over(rt, client, request_timeout);
        Ok(())
    })
}

/// Frees a client. Seats checked out from it stay usable (they share its
/// runtime, which ends with the last of them). NULL is accepted and does
/// nothing (`FLOATLM_STATUS_OK`). Must not be called twice.
///
/// # Safety
/// `client` is NULL or a pointer from `floatlm_client_new*` not yet freed.
#[no_mangle]
pub unsafe extern "C" fn floatlm_client_free(client: *mut FloatlmClient) -> FloatlmStatus {
    ffi(std::ptr::null_mut(), || {
        if client.is_null() {
            return Ok(());
        }
        let p = client as *mut ClientBox;
        guard::object(p as *const ClientBox, CLIENT_MAGIC, "client")?;
        std::ptr::addr_of_mut!((*p).magic).write_volatile(DEAD);
        let boxed = Box::from_raw(p);
        if guard::on_library_thread() {
            // From a loss callback: the runtime may end with this client,
            // which cannot be waited for from one of its own threads.
            std::thread::spawn(move || drop(boxed));
        } else {
            drop(boxed);
        }
        Ok(())
    })
}

/// The client behind a C pointer.
pub(crate) unsafe fn client_ref<'a>(p: *const FloatlmClient) -> Result<&'a ClientInner, Failure> {
    guard::object(p as *const ClientBox, CLIENT_MAGIC, "client")
}
