//! A minimal MQTT 3.1.1 client on our own codec, for the broker comparison: the same bytes go to fleethub and
//! to Mosquitto, so the only difference between the two runs is the broker. A publisher keeps `in_flight`
//! QoS 1 PUBLISH packets outstanding on its one connection and times each one to its PUBACK; a subscriber
//! acknowledges every QoS 1 message it receives and counts them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::{Bytes, BytesMut};
use fleethub_mqtt::{Connect, ConnectReturnCode, Packet, PacketId, Publish, QoS, Subscribe};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Largest packet this client accepts from a broker.
const MAX_PACKET: usize = 1024 * 1024;
/// How long a publisher waits, after its last publish, for the PUBACKs still outstanding.
const DRAIN_TIME: Duration = Duration::from_secs(30);

pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Where and how to dial: plain TCP, or TLS trusting one CA.
#[derive(Clone)]
pub(crate) struct Endpoint {
    pub(crate) address: SocketAddr,
    tls: Option<(TlsConnector, ServerName<'static>)>,
}

impl Endpoint {
    pub(crate) fn plain(address: SocketAddr) -> Self {
        Self { address, tls: None }
    }

    pub(crate) fn tls(address: SocketAddr, ca_pem: &str) -> anyhow::Result<Self> {
        let mut roots = rustls::RootCertStore::empty();
        for certificate in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots.add(certificate.context("the CA PEM")?)?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = ServerName::IpAddress(address.ip().into());
        Ok(Self {
            address,
            tls: Some((TlsConnector::from(Arc::new(config)), name)),
        })
    }

    async fn dial(&self) -> anyhow::Result<Box<dyn Io>> {
        let tcp = TcpStream::connect(self.address).await?;
        tcp.set_nodelay(true)?;
        Ok(match &self.tls {
            None => Box::new(tcp),
            Some((connector, name)) => Box::new(connector.connect(name.clone(), tcp).await?),
        })
    }
}

/// What goes into CONNECT.
pub(crate) struct Credentials {
    pub(crate) client_id: String,
    pub(crate) username: Option<String>,
    pub(crate) password: Option<String>,
}

/// A connection that got CONNACK 0, with whatever the broker sent after it.
pub(crate) struct Connection {
    io: Box<dyn Io>,
    read: BytesMut,
}

pub(crate) async fn connect(
    endpoint: &Endpoint,
    credentials: &Credentials,
) -> anyhow::Result<Connection> {
    let mut io = endpoint.dial().await?;
    let mut out = BytesMut::new();
    fleethub_mqtt::encode(
        &Packet::Connect(Connect {
            protocol_level: 4,
            clean_session: true,
            keep_alive: 300,
            client_id: credentials.client_id.clone(),
            will: None,
            username: credentials.username.clone(),
            password: credentials
                .password
                .as_ref()
                .map(|password| Bytes::from(password.clone().into_bytes())),
        }),
        &mut out,
    )?;
    io.write_all(&out).await?;
    let mut connection = Connection {
        io,
        read: BytesMut::with_capacity(8 * 1024),
    };
    match connection.next_packet().await? {
        Packet::ConnAck(ack) if ack.code == ConnectReturnCode::Accepted => Ok(connection),
        Packet::ConnAck(ack) => bail!("CONNACK {:?}", ack.code),
        other => bail!("expected CONNACK, got {}", other.name()),
    }
}

impl Connection {
    async fn next_packet(&mut self) -> anyhow::Result<Packet> {
        loop {
            if let Some(packet) = fleethub_mqtt::decode(&mut self.read, MAX_PACKET)? {
                return Ok(packet);
            }
            if self.io.read_buf(&mut self.read).await? == 0 {
                bail!("the broker closed the connection");
            }
        }
    }

    /// Publishes `payload` on `topic` at QoS 1 until `deadline`, `in_flight` at a time, then waits for the
    /// outstanding acknowledgements. Returns each acknowledged message's publish-to-PUBACK time in µs and
    /// how many were never acknowledged.
    ///
    /// One loop per connection, no locks and no timer per message: fill the window, write it in one go, read
    /// what the broker sent, refill. The generator shares the machine with the broker it measures, so every
    /// microsecond it spends is one the broker does not get (the same for both brokers). The window is a few
    /// small packets, so writing while not reading cannot dead-lock against a broker that writes back.
    pub(crate) async fn publish_until(
        mut self,
        topic: &str,
        payload: Bytes,
        in_flight: usize,
        deadline: Instant,
    ) -> anyhow::Result<(Vec<u32>, u64)> {
        // The messages in flight: (packet id, when it was written). Ids cycle through 1..=u16::MAX, far more
        // than a window, so an id is free again when it comes round.
        let mut sent: Vec<(u16, Instant)> = Vec::with_capacity(in_flight);
        let mut next: u16 = 0;
        let mut latencies = Vec::new();
        let mut out = BytesMut::new();
        let give_up = tokio::time::sleep_until((deadline + DRAIN_TIME).into());
        tokio::pin!(give_up);
        loop {
            let now = Instant::now();
            let publishing = now < deadline;
            while publishing && sent.len() < in_flight {
                next = next.checked_add(1).unwrap_or(1);
                sent.push((next, now));
                fleethub_mqtt::encode(
                    &Packet::Publish(Publish {
                        dup: false,
                        qos: QoS::AtLeastOnce,
                        retain: false,
                        topic: topic.to_owned(),
                        packet_id: PacketId::new(next),
                        payload: payload.clone(),
                    }),
                    &mut out,
                )?;
            }
            if !out.is_empty() {
                self.io.write_all(&out).await?;
                out.clear();
            }
            if !publishing && sent.is_empty() {
                break;
            }
            let read = tokio::select! {
                read = self.io.read_buf(&mut self.read) => read?,
                () = &mut give_up => break,
            };
            if read == 0 {
                bail!("the broker closed the connection");
            }
            while let Some(packet) = fleethub_mqtt::decode(&mut self.read, MAX_PACKET)? {
                if let Packet::PubAck(id) = packet
                    && let Some(index) = sent.iter().position(|(sent_id, _)| *sent_id == id.get())
                {
                    let (_, at) = sent.swap_remove(index);
                    latencies.push(at.elapsed().as_micros() as u32);
                }
            }
        }
        fleethub_mqtt::encode(&Packet::Disconnect, &mut out)?;
        let _ = self.io.write_all(&out).await;
        Ok((latencies, sent.len() as u64))
    }

    /// Publishes `payload` on `topic` at QoS 0 as fast as the connection takes it until `deadline` (TCP's
    /// flow control is the only brake), in writes of `BATCH` packets. Returns how many were sent.
    pub(crate) async fn publish_qos0_until(
        mut self,
        topic: &str,
        payload: Bytes,
        deadline: Instant,
    ) -> anyhow::Result<u64> {
        const BATCH: usize = 16;
        let mut out = BytesMut::new();
        let mut sent = 0u64;
        while Instant::now() < deadline {
            for _ in 0..BATCH {
                fleethub_mqtt::encode(
                    &Packet::Publish(Publish {
                        dup: false,
                        qos: QoS::AtMostOnce,
                        retain: false,
                        topic: topic.to_owned(),
                        packet_id: None,
                        payload: payload.clone(),
                    }),
                    &mut out,
                )?;
            }
            self.io.write_all(&out).await?;
            out.clear();
            sent += BATCH as u64;
        }
        fleethub_mqtt::encode(&Packet::Disconnect, &mut out)?;
        let _ = self.io.write_all(&out).await;
        let _ = self.io.flush().await;
        Ok(sent)
    }

    /// Subscribes to `filter` at QoS 1 and acknowledges and counts every message until `stop` is set.
    pub(crate) async fn subscribe_and_count(
        mut self,
        filter: &str,
        received: Arc<AtomicU64>,
        stop: Arc<AtomicBool>,
    ) -> anyhow::Result<()> {
        let mut out = BytesMut::new();
        fleethub_mqtt::encode(
            &Packet::Subscribe(Subscribe {
                packet_id: PacketId::new(1).expect("1 is a packet id"),
                filters: vec![(filter.to_owned(), QoS::AtLeastOnce)],
            }),
            &mut out,
        )?;
        self.io.write_all(&out).await?;
        out.clear();
        match self.next_packet().await? {
            Packet::SubAck(_) => {}
            other => bail!("expected SUBACK, got {}", other.name()),
        }
        while !stop.load(Ordering::Acquire) {
            while let Some(packet) = fleethub_mqtt::decode(&mut self.read, MAX_PACKET)? {
                if let Packet::Publish(publish) = packet {
                    received.fetch_add(1, Ordering::Relaxed);
                    if let Some(id) = publish.packet_id {
                        fleethub_mqtt::encode(&Packet::PubAck(id), &mut out)?;
                    }
                }
            }
            if !out.is_empty() {
                self.io.write_all(&out).await?;
                out.clear();
            }
            match tokio::time::timeout(Duration::from_millis(100), self.io.read_buf(&mut self.read))
                .await
            {
                Ok(Ok(0)) => bail!("the broker closed the subscriber's connection"),
                Ok(Ok(_)) | Err(_) => {}
                Ok(Err(error)) => return Err(error.into()),
            }
        }
        Ok(())
    }
}
