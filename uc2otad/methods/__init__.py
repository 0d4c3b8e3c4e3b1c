"""How an image reaches a board: wifi (ArduinoOTA), can (CANopen streaming through the master), usb."""
