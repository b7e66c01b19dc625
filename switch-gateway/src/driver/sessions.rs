//! Glue between the cloud link and the WebRTC sessions: a session's events to the cloud
//! (trickled candidates) and to the core (DataChannel text, its end), and the `ice_servers`
//! the cloud hands out resolved into what sessions gather candidates with.

use tokio::sync::mpsc;
use trunkline_protocol::{ClientMsg, DirectClientMsg, DirectServerMsg};

use crate::{CoreIn, b2bua, bridge};

/// Session `id`'s events: its candidates go to the cloud (trickle), its DataChannel text to the
/// core ([`Core::on_direct`]), its end as the session going away.
///
/// `remote` (F2 caller side): what the callee switch says comes back as
/// [`b2bua::RemoteEvent`]s instead.
pub(crate) async fn session_events(
    id: u64,
    remote: bool,
    call_id: String,
    mut events: mpsc::UnboundedReceiver<bridge::SessionEvent>,
    bridge: mpsc::UnboundedSender<bridge::BridgeCmd>,
    core: mpsc::Sender<CoreIn>,
    link: mpsc::Sender<ClientMsg>,
) {
    use trunkline_protocol::SignalPayload;
    while let Some(ev) = events.recv().await {
        match ev {
            bridge::SessionEvent::Candidate(candidate) => {
                let payload = SignalPayload::Ice { candidate, sdp_mid: None, sdp_m_line_index: Some(0) };
                let _ = link.try_send(ClientMsg::DirectSignal { call_id: call_id.clone(), payload });
            }
            bridge::SessionEvent::Dc(text) if remote => {
                let ev = match DirectServerMsg::decode(&text) {
                    Ok(DirectServerMsg::Accepted { .. }) => b2bua::RemoteEvent::Accepted,
                    Ok(DirectServerMsg::Progress { event }) => b2bua::RemoteEvent::Progress(event),
                    Ok(DirectServerMsg::Ended { outcome }) => b2bua::RemoteEvent::Ended(outcome),
                    Ok(DirectServerMsg::Error { code, message }) => b2bua::RemoteEvent::Refused { code, message },
                    Ok(DirectServerMsg::Answer { .. }) => continue,
                    Err(e) => {
                        tracing::debug!(%call_id, error = %e, "bad DataChannel message from the callee switch");
                        continue;
                    }
                };
                if core.send(CoreIn::Remote { id, ev }).await.is_err() {
                    return;
                }
            }
            bridge::SessionEvent::Dc(text) => match DirectClientMsg::decode(&text) {
                Ok(msg) => {
                    if core.send(CoreIn::Channel { id, msg }).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let reply = DirectServerMsg::Error { code: e.code, message: e.message };
                    let _ = bridge.send(bridge::BridgeCmd::Dc(reply.encode()));
                }
            },
            bridge::SessionEvent::Gone(why) => {
                tracing::info!(%call_id, %why, "session ended");
                let msg = if remote {
                    CoreIn::Remote { id, ev: b2bua::RemoteEvent::Closed(why.to_string()) }
                } else {
                    CoreIn::SessionGone { id }
                };
                let _ = core.send(msg).await;
                return;
            }
        }
    }
}

/// Resolve the `stun:` URLs of `ice_servers` into the addresses sessions probe, and the
/// `turn:`/`turns:` URLs (with their entry's credentials) into the servers sessions allocate
/// relayed addresses on. The credentials are never logged.
pub(crate) async fn resolve_stun(ice_servers: Vec<trunkline_protocol::IceServer>, into: bridge::StunServers) {
    let (stun_urls, turn_urls) = bridge::ice_plan(&ice_servers);
    let mut addrs = vec![];
    for (host, port) in stun_urls {
        match tokio::net::lookup_host((host.as_str(), port)).await {
            Ok(found) => addrs.extend(found.filter(|a| a.is_ipv4()).take(1)),
            Err(e) => tracing::warn!(%host, port, error = %e, "cannot resolve STUN server"),
        }
    }
    addrs.dedup();
    let mut turn = vec![];
    for (url, username, credential) in turn_urls {
        match tokio::net::lookup_host((url.host.as_str(), url.port)).await {
            Ok(mut found) => {
                if let Some(addr) = found.find(|a| a.is_ipv4()) {
                    turn.push(trunkline_media::turn::TurnServer::new(url.transport, addr, &url.host, &username, &credential));
                }
            }
            Err(e) => tracing::warn!(host = %url.host, port = url.port, error = %e, "cannot resolve TURN server"),
        }
    }
    tracing::info!(servers = ?addrs, "STUN servers for server-reflexive candidates");
    tracing::info!(
        servers = ?turn.iter().map(|t| format!("{}:{}", t.transport.as_str(), t.addr)).collect::<Vec<_>>(),
        "TURN servers for relayed candidates"
    );
    let mut ice = into.lock().unwrap();
    ice.stun = addrs;
    ice.turn = turn;
}
