//! The AddReality API as the exporter's tests meet it: the library's
//! [`Simulator`] served over real HTTP on loopback, and players as the API
//! lists them.

use serde_json::Value;
use signage_watchdog::addreality::simulator::Simulator;
use tokio::net::TcpListener;
use tokio::runtime::Runtime;
use tokio::sync::oneshot;

/// A player as the AddReality API lists it, activated and playing.
pub(crate) fn device(id: i64, name: &str, online: bool) -> Value {
    serde_json::json!({
        "id": id, "name": name,
        "connection_state": if online { "online" } else { "offline" },
        "player_status": "playback", "last_online": "2025-05-26T13:29:08.166738Z",
        "activation_state": true, "player_version": "4.1.76", "time_zone": "+03:00"
    })
}

/// The simulated API serving on `127.0.0.1:0`; dropping it stops the server.
pub(crate) struct SimulatedApi {
    /// The simulator: its devices, faults and the requests it received.
    pub simulator: Simulator,
    /// Its device-list URL, as a configuration names it.
    pub url: String,
    _stop: oneshot::Sender<()>,
    /// The runtime serving it, when it has one of its own (dropped last).
    runtime: Option<Runtime>,
}

impl SimulatedApi {
    /// Serves `devices` to clients that present `token`, on the calling
    /// test's runtime.
    pub(crate) async fn start(token: &str, devices: Vec<Value>) -> SimulatedApi {
        let simulator = Simulator::new(token);
        simulator.set_devices(devices);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind a loopback port");
        let url = Simulator::device_list_url(listener.local_addr().expect("a bound address"));
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(simulator.clone().serve(listener, async {
            let _ = stopped.await;
        }));
        SimulatedApi { simulator, url, _stop: stop, runtime: None }
    }

    /// Serves the same simulator (the same accounts and devices) at another
    /// URL too, until the returned sender is dropped: for a second exporter
    /// whose connection to the API a test cuts on its own.
    pub(crate) async fn serve_again(&self) -> (String, oneshot::Sender<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind a loopback port");
        let url = Simulator::device_list_url(listener.local_addr().expect("a bound address"));
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(self.simulator.clone().serve(listener, async {
            let _ = stopped.await;
        }));
        (url, stop)
    }

    /// The same on a runtime of its own, for a test that blocks its thread
    /// waiting on a child process.
    pub(crate) fn start_on_own_runtime(token: &str, devices: Vec<Value>) -> SimulatedApi {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("build the simulator's runtime");
        let mut api = runtime.block_on(SimulatedApi::start(token, devices));
        api.runtime = Some(runtime);
        api
    }
}
