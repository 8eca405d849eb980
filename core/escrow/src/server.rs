//! `skyroute escrow`: the escrow as its own process, answering JSON lines over TCP.
//!
//! Requests (one JSON object per line) and their replies:
//! `{"cmd":"open"}` -> `{"ok":true,"account","secret"}`;
//! `{"cmd":"deposit","account","amount"}` -> `{"ok":true,"balance"}`;
//! `{"cmd":"authorize","account","secret","payer"}` (a route key, hex) -> `{"ok":true}`;
//! `{"cmd":"settle","items":[{"receipt","account","payee_sig"}]}` -> `{"ok":true,"results":
//! [{"paid"} | {"error","code"}]}` (`code`: see `EscrowError::code`); `{"cmd":"balance","account","secret"}` -> `{"ok":true,"balance"}`;
//! `{"cmd":"withdraw","account","secret","to","amount"}` -> `{"ok":true,"txid"}`.
//! Errors: `{"ok":false,"error"}`. Answers name accounts and amounts only, never a payer.

use std::sync::Arc;

use serde::Deserialize;
use serde_json::{json, Value};
use skyroute_proto::PublicKey;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use super::{Escrow, EscrowError, Settle};

/// Longest request line, most items in one settle, most connections at once.
const MAX_LINE: usize = 4 << 20;
const MAX_BATCH: usize = 10_000;
const MAX_CONNECTIONS: usize = 64;

#[derive(Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
enum Request {
    Open,
    Deposit { account: String, amount: u64 },
    Authorize { account: String, secret: String, payer: String },
    Settle { items: Vec<Settle> },
    Balance { account: String, secret: String },
    Withdraw { account: String, secret: String, to: String, amount: u64 },
}

fn answer(e: &Escrow, line: &str) -> Value {
    let r: Result<Value, EscrowError> = (|| {
        let req: Request = serde_json::from_str(line).map_err(|x| EscrowError::BadRequest(x.to_string()))?;
        Ok(match req {
            Request::Open => {
                let (account, secret) = e.open_account()?;
                json!({ "ok": true, "account": account, "secret": secret })
            }
            Request::Deposit { account, amount } => json!({ "ok": true, "balance": e.deposit(&account, amount)? }),
            Request::Authorize { account, secret, payer } => {
                let payer =
                    PublicKey::from_hex(&payer).map_err(|_| EscrowError::BadRequest("payer: not a key".into()))?;
                e.authorize(&account, &secret, &payer)?;
                json!({ "ok": true })
            }
            Request::Settle { items } => {
                if items.len() > MAX_BATCH {
                    return Err(EscrowError::BadRequest(format!("at most {MAX_BATCH} items")));
                }
                let results: Vec<Value> = e
                    .settle(&items)?
                    .into_iter()
                    .map(|r| match r {
                        Ok(s) => json!({ "paid": s.paid }),
                        Err(x) => json!({ "error": x.to_string(), "code": x.code() }),
                    })
                    .collect();
                json!({ "ok": true, "results": results })
            }
            Request::Balance { account, secret } => json!({ "ok": true, "balance": e.balance(&account, &secret)? }),
            Request::Withdraw { account, secret, to, amount } => {
                json!({ "ok": true, "txid": e.withdraw(&account, &secret, &to, amount)? })
            }
        })
    })();
    r.unwrap_or_else(|x| json!({ "ok": false, "error": x.to_string() }))
}

/// Answers one connection's requests in order. Each request is one redb write transaction
/// (it may wait for the disk), so it runs on the blocking pool, never on a runtime thread.
async fn serve(e: Arc<Escrow>, stream: TcpStream) -> std::io::Result<()> {
    let (read, mut out) = stream.into_split();
    let mut r = BufReader::new(read);
    let mut line = String::new();
    loop {
        line.clear();
        let n = (&mut r).take(MAX_LINE as u64 + 1).read_line(&mut line).await?;
        if n == 0 {
            return Ok(());
        }
        let too_long = line.len() > MAX_LINE;
        let reply = if too_long {
            json!({ "ok": false, "error": format!("request longer than {MAX_LINE} bytes") })
        } else {
            let (e, request) = (e.clone(), std::mem::take(&mut line));
            tokio::task::spawn_blocking(move || answer(&e, request.trim()))
                .await
                .unwrap_or_else(|_| json!({ "ok": false, "error": "internal error" }))
        };
        out.write_all(format!("{reply}\n").as_bytes()).await?;
        if too_long {
            return Ok(());
        }
    }
}

/// Serves `escrow` on `listener` until the task is dropped: at most 64 connections at once
/// (more are told so and closed).
pub async fn serve_on(escrow: Escrow, listener: TcpListener) -> std::io::Result<()> {
    let escrow = Arc::new(escrow);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok((mut stream, _)) = listener.accept().await else { continue };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            let _ = stream.write_all(b"{\"ok\":false,\"error\":\"too many connections\"}\n").await;
            continue;
        };
        let e = escrow.clone();
        tokio::spawn(async move {
            let _ = serve(e, stream).await;
            drop(slot);
        });
    }
}

/// Serves `escrow` on `listener` until the process ends, on a runtime of its own (what
/// `skyroute escrow` and the tests run, in a thread of their own).
pub fn run(escrow: Escrow, listener: std::net::TcpListener) -> std::io::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    rt.block_on(async {
        listener.set_nonblocking(true)?;
        serve_on(escrow, TcpListener::from_std(listener)?).await
    })
}
