//! `broadcast_async`: a broadcast on a tokio socket that waits for
//! writability through tokio and resumes where it stopped.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;

use tokio::io::Interest;
use tokio::net::UdpSocket;

use super::Broadcaster;
use crate::send::call::Resume;
use crate::{Error, FailureReason, Report};

impl Broadcaster {
    /// [`Broadcaster::broadcast`] on a tokio socket, for async code: where
    /// the socket's send buffer is full it waits for writability through
    /// tokio (so the socket's readiness is cleared, and nothing spins), then
    /// resumes exactly where it stopped. Every destination gets its copy
    /// once, none twice, whatever the length of the list. Only with the
    /// `tokio` feature.
    ///
    /// Returns one report for the whole list, as `broadcast` does, and the
    /// same errors (bad input is refused before anything is sent). If the
    /// call fails after part of the list was sent (the MTU shrank under the
    /// payload, say), the rest is in [`Report::failed`] with the reason.
    ///
    /// Cancel-safe in the sense tokio uses: dropping the future between
    /// two waits leaves every destination either sent once or not at all,
    /// but the report of what was sent is lost with it.
    ///
    /// # Example
    ///
    /// ```no_run
    /// use std::net::SocketAddr;
    /// use elec_broadcast::Broadcaster;
    ///
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let broadcaster = Broadcaster::new("eth0")?;
    /// let socket = tokio::net::UdpSocket::bind("0.0.0.0:7000").await?;
    /// let peers: Vec<SocketAddr> = (2..=300)
    ///     .map(|i| SocketAddr::from(([10, 0, (i / 256) as u8, (i % 256) as u8], 7000)))
    ///     .collect();
    /// let report = broadcaster.broadcast_async(&socket, b"rumour 9", &peers).await?;
    /// assert_eq!(report.copies_sent + report.failed.len(), peers.len());
    /// # Ok(()) }
    /// ```
    pub async fn broadcast_async(
        &self,
        socket: &UdpSocket,
        payload: &[u8],
        destinations: &[SocketAddr],
    ) -> Result<Report, Error> {
        let mut done: Option<Report> = None;
        let mut fan_outs = 0;
        // The list being sent: all of them, or (where the place a call
        // stopped cannot be resumed from) what was not sent yet; and the
        // place in its plan where the last call stopped.
        let mut list: Option<Vec<SocketAddr>> = None;
        let mut resume: Option<Resume> = None;
        loop {
            // At once when tokio knows the socket writable.
            socket.writable().await.map_err(Error::Send)?;
            let mut outcome = None;
            let tried = socket.try_io(Interest::WRITABLE, || {
                let destinations = list.as_deref().unwrap_or(destinations);
                match self.send(socket.as_fd(), payload, destinations, resume) {
                    Ok(part) => {
                        // (No part: nothing was tried, and the readiness
                        // stays as it is.)
                        let blocked = part.as_ref().is_some_and(|part| would_block(&part.report));
                        outcome = Some(Ok(part.map(|part| (part, blocked))));
                        if blocked {
                            // Part was sent, the rest would block: tell
                            // tokio, which clears the readiness.
                            Err(io::Error::from(io::ErrorKind::WouldBlock))
                        } else {
                            Ok(())
                        }
                    }
                    Err(Error::Send(err)) if err.kind() == io::ErrorKind::WouldBlock => Err(err),
                    Err(err) => {
                        outcome = Some(Err(err));
                        Ok(())
                    }
                }
            });
            match outcome {
                Some(Ok(Some((part, blocked)))) => {
                    fan_outs += part.fan_outs;
                    match &mut done {
                        Some(done) => done.merge(part.report),
                        None => done = Some(part.report),
                    }
                    if !blocked {
                        break;
                    }
                    resume = part.stopped;
                    if resume.is_none() {
                        list = done.as_ref().map(Report::unsent);
                    }
                }
                // The plan the last call stopped in is gone: go on with
                // the list of what it did not send, planned afresh.
                Some(Ok(None)) => {
                    resume = None;
                    list = done.as_ref().map(Report::unsent);
                    continue;
                }
                Some(Err(err)) => match done.as_mut() {
                    // Nothing was sent: the error is the answer.
                    None => return Err(err),
                    // Part was sent before: the rest failed, for the reason
                    // the error gives.
                    Some(done) => {
                        let reason = FailureReason::of_error(&err);
                        for failure in &mut done.failed {
                            if failure.reason == FailureReason::WouldBlock {
                                failure.reason = reason;
                            }
                        }
                        break;
                    }
                },
                // Would block with nothing sent: the same again.
                None => {}
            }
            if let Err(err) = tried {
                if err.kind() != io::ErrorKind::WouldBlock {
                    return Err(Error::Send(err));
                }
            }
        }
        let report = done.unwrap_or_default();
        self.counters.add(&report, fan_outs);
        Ok(report)
    }
}

/// Whether a call stopped because a send would have blocked: some of its
/// destinations are still to be sent.
fn would_block(report: &Report) -> bool {
    report
        .failed
        .iter()
        .any(|failure| failure.reason == FailureReason::WouldBlock)
}
