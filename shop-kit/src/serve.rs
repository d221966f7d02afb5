//! Runs a router on a listener until shutdown; drops and re-binds the socket for `refuse`.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;

use crate::faults::Faults;

/// Serves `app` on `listener` until `shutdown` resolves, then drains in-flight requests.
///
/// With `faults`, setting `refuse` shuts the server down gracefully (the listening socket is
/// closed at once, so connects get ECONNREFUSED; in-flight requests finish) and clearing it
/// binds the same address again.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
    faults: Option<Faults>,
) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        stop_tx.send_replace(true);
    });
    let refuse_rx = faults.as_ref().map(Faults::subscribe);
    let mut listener = Some(listener);
    tracing::info!(%addr, "listening");
    loop {
        let current = match listener.take() {
            Some(current) => current,
            None => match rebind(addr, stop_rx.clone()).await? {
                Some(current) => current,
                None => return Ok(()),
            },
        };
        if let Some(faults) = &faults {
            faults.mark_listening(true);
        }
        let signal = {
            let mut stop = stop_rx.clone();
            let mut refuse = refuse_rx.clone();
            async move {
                let refused = async {
                    match refuse.as_mut() {
                        Some(rx) => {
                            let _ = rx.wait_for(|s| s.refuse).await;
                        }
                        None => std::future::pending::<()>().await,
                    }
                };
                tokio::select! {
                    _ = stop.wait_for(|stop| *stop) => {}
                    _ = refused => {}
                }
            }
        };
        let service = app.clone().into_make_service_with_connect_info::<SocketAddr>();
        axum::serve(current, service).with_graceful_shutdown(signal).await?;
        if let Some(faults) = &faults {
            faults.mark_listening(false);
        }
        if *stop_rx.borrow() {
            tracing::info!(%addr, "shut down");
            return Ok(());
        }
        tracing::warn!(%addr, "fault injection: refusing connections");
        let mut stop = stop_rx.clone();
        let mut refuse = refuse_rx.clone();
        tokio::select! {
            _ = stop.wait_for(|stop| *stop) => return Ok(()),
            _ = async {
                if let Some(rx) = refuse.as_mut() {
                    let _ = rx.wait_for(|s| !s.refuse).await;
                }
            } => {}
        }
        tracing::info!(%addr, "fault injection cleared: accepting connections again");
    }
}

/// Binds `addr` again, retrying briefly while the OS still holds it; `None` on shutdown.
async fn rebind(addr: SocketAddr, mut stop: watch::Receiver<bool>) -> anyhow::Result<Option<TcpListener>> {
    let mut attempts = 0;
    loop {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        match socket.bind(addr).and_then(|()| socket.listen(1024)) {
            Ok(listener) => return Ok(Some(listener)),
            Err(err) if attempts < 50 => {
                attempts += 1;
                tracing::debug!(%addr, %err, "re-bind failed, retrying");
            }
            Err(err) => return Err(anyhow::anyhow!("re-binding {addr}: {err}")),
        }
        tokio::select! {
            _ = stop.wait_for(|stop| *stop) => return Ok(None),
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
}
