// Sliding window generator for k x k windows with stride and zero padding.
//
// Input: the pixels of (IH, IW) frames in raster order, C elements of EB bits each. Output: for
// every output position (oy, ox) in raster order, the KH x KW window whose top-left input pixel is
// (oy*SH - PT, ox*SW - PL): tap t = ky*KW + kx at out_data[t*C*EB +: C*EB]. A tap outside the
// frame (padding) reads as all-zero bits and has out_mask[t] = 0; consumers decide what a padded
// tap means (the MVTU's class tables correct for it exactly, max pool ignores it). out_row/out_col
// give (oy, ox).
//
// Buffer: R input rows in a circular memory of R*IW pixels. The writer fills whole rows while a
// slot is free; the reader waits until the last input row its window needs is complete, reads the
// KH*KW taps one per cycle (synchronous memory read), and after the window is taken releases the
// rows no later window of the frame needs (all of them at the end of a frame, including rows no
// window uses). A window costs KH*KW + 4 cycles: the tap address is registered before the memory
// (its row-slot arithmetic and the memory's address setup do not fit one cycle at speed), and
// slot s of the buffer starts at s*IW from a table, not a multiplier. R >= KH + SH lets the writer fill the next rows
// meanwhile; more rows let a producer run ahead across frame boundaries. Requires PT < KH and
// PL < KW (every window has a valid tap) and R >= KH.
`default_nettype none
module bnnc_swg #(
    parameter int IH = 4,
    parameter int IW = 4,
    parameter int C = 1,
    parameter int EB = 1,
    parameter int KH = 3,
    parameter int KW = 3,
    parameter int SH = 1,
    parameter int SW = 1,
    parameter int PT = 0,
    parameter int PL = 0,
    parameter int OH = 2,
    parameter int OW = 2,
    parameter int R = KH + SH,
    localparam int PW = C * EB,
    localparam int T = KH * KW,
    localparam int RB = OH > 1 ? $clog2(OH) : 1,
    localparam int CB = OW > 1 ? $clog2(OW) : 1
) (
    input  logic            clk,
    input  logic            rst_n,
    input  logic            in_valid,
    output logic            in_ready,
    input  logic [  PW-1:0] in_data,
    output logic            out_valid,
    input  logic            out_ready,
    output logic [T*PW-1:0] out_data,
    output logic [   T-1:0] out_mask,
    output logic [  RB-1:0] out_row,
    output logic [  CB-1:0] out_col
);
  // signed position registers wide enough for -PT .. IH + KH + SH
  localparam int YW = $clog2(IH + KH + SH + PT + 2) + 1;
  localparam int XW = $clog2(IW + KW + SW + PL + 2) + 1;
  localparam int AW = R * IW > 1 ? $clog2(R * IW) : 1;
  localparam int SLW = R > 1 ? $clog2(R) : 1;
  localparam int NW = $clog2(R + 1);
  localparam int HW = $clog2(IH + 1);
  localparam int CW = IW > 1 ? $clog2(IW) : 1;
  localparam int KYW = KH > 1 ? $clog2(KH) : 1;
  localparam int KXW = KW > 1 ? $clog2(KW) : 1;

  // ---------------------------------------------------------------- row buffer
  logic [PW-1:0] rows[R*IW];
  logic [PW-1:0] rdata;
  logic [AW-1:0] raddr, raddr_q;
  logic [AW-1:0] waddr;  // wslot*IW + wcol: rows are written in order, so a counter
  logic [CW-1:0] wcol;
  logic [SLW-1:0] wslot;
  logic [NW-1:0] nfull;  // complete rows held, oldest first (frame row rbase in slot rslot)

  wire push = in_valid && in_ready;
  wire row_done = push && wcol == CW'(IW - 1);
  assign in_ready = nfull != NW'(R);

  always_ff @(posedge clk) begin
    if (push) rows[waddr] <= in_data;
    raddr_q <= raddr;
    rdata <= rows[raddr_q];
  end

  // ---------------------------------------------------------------- reader
  typedef enum logic [2:0] {
    S_NEXT,  // release rows no longer needed, wait for the rows of the next window
    S_READ,  // issue one tap address per cycle
    S_WAIT,  // the last tap's address is in its register
    S_LAST,  // the last tap's data arrives
    S_HOLD   // window complete, waiting for out_ready
  } state_t;
  state_t state;

  logic [RB-1:0] oy;
  logic [CB-1:0] ox;
  logic signed [YW-1:0] y_top, iy;
  logic signed [XW-1:0] x_left, ix;
  logic [HW-1:0] rbase, need, last_row;  // oldest held row, first row still needed, last row needed
  // need and last_row of the next window row, registered from y_top (two cycles): y_top changes at
  // most once per window (KH*KW + 4 cycles), so they are current when a window ends, off the critical path
  logic [HW-1:0] need_down, last_row_down;
  logic [SLW-1:0] rslot;
  logic frame_wrap;
  logic [KYW-1:0] ky;
  logic [KXW-1:0] kx;
  logic tap_ok_d, tap_ok_q, shift_d, shift_q;  // a tap's read: address registered (_d), data (_q)

  wire pop = state == S_NEXT && rbase != need && nfull != '0;
  wire rows_ready = NW'(last_row - rbase) < nfull;
  wire tap_ok = iy >= 0 && iy < YW'(IH) && ix >= 0 && ix < XW'(IW);
  wire last_tap = ky == KYW'(KH - 1) && kx == KXW'(KW - 1);

  function automatic logic [AW-1:0] slot_start(input logic [SLW-1:0] s);  // s * IW
    slot_start = '0;
    for (int i = 0; i < R; i++) if (s == SLW'(i)) slot_start = AW'(i * IW);
  endfunction

  // slot of input row iy: rslot + (iy - rbase), modulo R
  logic [SLW:0] slot_sum;
  logic [SLW-1:0] slot;
  always_comb begin
    slot_sum = (SLW + 1)'(rslot) + (SLW + 1)'(iy[HW-1:0] - rbase);
    slot = slot_sum >= (SLW + 1)'(R) ? SLW'(slot_sum - (SLW + 1)'(R)) : SLW'(slot_sum);
    raddr = tap_ok ? slot_start(slot) + AW'(ix[CW-1:0]) : '0;
  end

  function automatic logic [HW-1:0] first_row(input logic signed [YW-1:0] top);
    first_row = top < 0 ? '0 : HW'(top);
  endfunction
  function automatic logic [HW-1:0] bottom_row(input logic signed [YW-1:0] top);
    bottom_row = top + YW'(KH - 1) >= YW'(IH) ? HW'(IH - 1) : HW'(top + YW'(KH - 1));
  endfunction

  // the window shifts down one tap per read: the oldest tap ends at the bottom
  /* verilator lint_off UNUSEDSIGNAL */
  logic [(T+1)*PW-1:0] shifted;
  logic [T:0] mask_shifted;
  /* verilator lint_on UNUSEDSIGNAL */
  assign shifted = {tap_ok_q ? rdata : {PW{1'b0}}, out_data};
  assign mask_shifted = {tap_ok_q, out_mask};
  assign out_row = oy;
  assign out_col = ox;

  // y_top + SH and that window row's last input row are registered first (two carry chains and a
  // compare in one cycle missed 150 MHz); need_down and last_row_down follow a cycle later
  logic signed [YW-1:0] y_down, y_down_last;
  always_ff @(posedge clk) begin
    y_down <= y_top + YW'(SH);
    y_down_last <= y_top + YW'(SH + KH - 1);
    need_down <= first_row(y_down);
    last_row_down <= y_down_last >= YW'(IH) ? HW'(IH - 1) : HW'(y_down_last);
  end

  always_ff @(posedge clk) begin
    if (shift_q) begin
      out_data <= shifted[(T+1)*PW-1:PW];
      out_mask <= mask_shifted[T:1];
    end
  end

  always_ff @(posedge clk) begin
    if (!rst_n) begin
      wcol <= '0;
      wslot <= '0;
      waddr <= '0;
      nfull <= '0;
      state <= S_NEXT;
      oy <= '0;
      ox <= '0;
      y_top <= -YW'(PT);
      x_left <= -XW'(PL);
      iy <= '0;
      ix <= '0;
      rbase <= '0;
      need <= '0;
      last_row <= bottom_row(-YW'(PT));
      rslot <= '0;
      frame_wrap <= 1'b0;
      ky <= '0;
      kx <= '0;
      tap_ok_d <= 1'b0;
      tap_ok_q <= 1'b0;
      shift_d <= 1'b0;
      shift_q <= 1'b0;
      out_valid <= 1'b0;
    end else begin
      // writer
      if (push) begin
        wcol <= row_done ? '0 : wcol + 1'b1;
        if (row_done) wslot <= wslot == SLW'(R - 1) ? '0 : wslot + 1'b1;
        waddr <= waddr == AW'(R * IW - 1) ? '0 : waddr + 1'b1;
      end
      nfull <= nfull + NW'(row_done) - NW'(pop);
      // reader
      shift_d <= state == S_READ;
      shift_q <= shift_d;
      tap_ok_d <= tap_ok;
      tap_ok_q <= tap_ok_d;
      case (state)
        S_NEXT: begin
          if (pop) begin
            rbase <= rbase + 1'b1;
            rslot <= rslot == SLW'(R - 1) ? '0 : rslot + 1'b1;
          end else if (rbase == need && frame_wrap) begin
            rbase <= '0;
            need <= '0;
            frame_wrap <= 1'b0;
          end else if (rbase == need && rows_ready) begin
            state <= S_READ;
            ky <= '0;
            kx <= '0;
            iy <= y_top;
            ix <= x_left;
          end
        end
        S_READ: begin
          if (kx == KXW'(KW - 1)) begin
            kx <= '0;
            ky <= ky + 1'b1;
            ix <= x_left;
            iy <= iy + 1'b1;
          end else begin
            kx <= kx + 1'b1;
            ix <= ix + 1'b1;
          end
          if (last_tap) state <= S_WAIT;
        end
        S_WAIT: state <= S_LAST;
        S_LAST: begin
          state <= S_HOLD;
          out_valid <= 1'b1;
        end
        S_HOLD: begin
          if (out_ready) begin
            out_valid <= 1'b0;
            state <= S_NEXT;
            if (ox == CB'(OW - 1)) begin
              ox <= '0;
              x_left <= -XW'(PL);
              if (oy == RB'(OH - 1)) begin
                oy <= '0;
                y_top <= -YW'(PT);
                need <= HW'(IH);
                last_row <= bottom_row(-YW'(PT));
                frame_wrap <= 1'b1;
              end else begin
                oy <= oy + 1'b1;
                y_top <= y_top + YW'(SH);
                need <= need_down;
                last_row <= last_row_down;
              end
            end else begin
              ox <= ox + 1'b1;
              x_left <= x_left + XW'(SW);
            end
          end
        end
        default: state <= S_NEXT;
      endcase
    end
  end
endmodule
`default_nettype wire
