//! The event style (on_connect / on_message / on_disconnect).

use std::sync::{Arc, Mutex};

use switchboard::{
    testing::TestClient, App, CloseCode, CloseFrame, Error, Message, Socket, WsEvents,
};

#[derive(Clone, Default)]
struct Recorder {
    log: Arc<Mutex<Vec<String>>>,
}

impl WsEvents for Recorder {
    async fn on_connect(&self, ws: &mut Socket) -> Result<(), Error> {
        self.log.lock().unwrap().push("connect".into());
        ws.send_text("welcome").await
    }

    async fn on_message(&self, ws: &mut Socket, msg: Message) -> Result<(), Error> {
        let text = msg.as_text().unwrap_or("<binary>").to_owned();
        self.log.lock().unwrap().push(format!("message {text}"));
        if text == "fail" {
            return Err(Error::app("asked to fail"));
        }
        ws.send(msg).await
    }

    async fn on_disconnect(&self, _ws: &mut Socket, close: CloseFrame) {
        self.log
            .lock()
            .unwrap()
            .push(format!("disconnect {}", close.code));
    }
}

#[tokio::test]
async fn callbacks_run_in_order() {
    let rec = Recorder::default();
    let c = TestClient::new(App::new().websocket_events("/events", rec.clone()));
    let mut ws = c.websocket_connect("/events").await.unwrap();
    assert_eq!(ws.recv_text().await.unwrap().as_deref(), Some("welcome"));
    ws.send_text("hi").await.unwrap();
    assert_eq!(ws.recv_text().await.unwrap().as_deref(), Some("hi"));
    ws.close(CloseCode(4001), "later").await.unwrap();
    // Wait for the server side to record the disconnect.
    for _ in 0..100 {
        if rec.log.lock().unwrap().len() == 3 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(
        *rec.log.lock().unwrap(),
        ["connect", "message hi", "disconnect 4001"]
    );
}

#[tokio::test]
async fn callback_error_closes_with_1011() {
    let rec = Recorder::default();
    let c = TestClient::new(App::new().websocket_events("/events", rec.clone()));
    let mut ws = c.websocket_connect("/events").await.unwrap();
    assert_eq!(ws.recv_text().await.unwrap().as_deref(), Some("welcome"));
    ws.send_text("fail").await.unwrap();
    match ws.recv().await.unwrap() {
        Message::Close(Some(f)) => assert_eq!(f.code, CloseCode::INTERNAL_ERROR),
        other => panic!("expected close, got {other:?}"),
    }
}
